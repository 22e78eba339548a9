"""Pick, per machine, the faster of two paths that compute the same thing.

A fast path that wins on one CPU can lose on another: the prepacked oneDNN linears of
:mod:`.packed_linear` make STC-Cacher's full reference layers 0.81x the stock layer where torch
dispatches AVX-512 kernels, and 1.07x where it dispatches AVX2 (issue 22). No rule read off the
ISA name holds for every CPU and thread count, so an opt-in-by-default fast path is chosen by
timing both on the real shapes, once per key, and keeping the faster one; a tie (within
``margin``) keeps the stock path, whose results are the reference ones, and so does a
calibration too noisy to show a clear gain.

The cache is an ordinary object held by whoever owns the choice (a strategy instance), never a
module global: two owners calibrate independently, and dropping the owner drops its choices.
Keys are built with :func:`machine_key`, which adds the ISA and the thread count to the shapes,
since a choice made under one of them says nothing about another. The clock is injected so the
choice logic is tested with a fake clock, never wall time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

from .machine import isa

__all__ = ["Calibration", "Choice", "machine_key", "timeable"]

T = TypeVar("T")


def machine_key(*parts: Hashable) -> tuple[Hashable, ...]:
    """``parts`` (shapes, dtypes, a path's name) plus torch's CPU capability and intra-op threads."""
    return (*parts, isa(), torch.get_num_threads())


def timeable() -> bool:
    """Whether a call here runs at its own speed: not under a dispatch mode (the bench's FLOP
    counter, which would also count the calibration's extra calls) nor while torch.compile traces."""
    from torch.utils._python_dispatch import is_in_torch_dispatch_mode

    return not (is_in_torch_dispatch_mode() or torch.compiler.is_compiling())


@dataclass(frozen=True)
class Choice:
    """One calibration's outcome: which path, the timings it rests on and what it cost."""

    fast: bool
    """True: the fast path was faster than the stock one by more than the margin."""
    ratio: float
    """Median over the timed rounds of (fast path's time / stock path's time) in the same round."""
    stock_s: float
    fast_s: float
    """Median seconds per call of each path over the timed rounds."""
    cost_s: float
    """Wall time of the whole calibration (warm-up and timed calls of both paths)."""


class Calibration(Generic[T]):
    """``run(key, stock, fast)``: the result of the path chosen for ``key``, calibrating on first use.

    A calibration calls each path once untimed (a first call packs weights or allocates), then
    ``calls`` rounds of one stock and one fast call, back to back (which goes first alternates),
    and takes the median over the rounds of the fast/stock time ratio: both calls of a round see
    about the same load from other processes, so the ratio is steadier than either time on a
    shared machine (the bench's own per-repeat ratios rest on the same idea). The fast path is
    chosen only if that median is below ``1 - margin``: the default 8 % keeps the row kernels'
    AVX-512 gain (about 0.8x) and refuses what a loaded machine's noise can fake (three rounds
    of an emulated-AVX2 layer, truly about 1.1x, measured 0.94-0.98 at load 2-3 on 2 cores). The result returned by a calibrating call is the chosen path's own last result,
    so a caller gets exactly what that path computes, and the calibration costs
    ``2 * (1 + calls) - 1`` extra calls, once per key.
    """

    def __init__(
        self, clock: Callable[[], float] = time.perf_counter, calls: int = 3, margin: float = 0.08
    ) -> None:
        if calls < 1 or not 0.0 <= margin < 1.0:
            raise ValueError(f"calls must be >= 1 and 0 <= margin < 1, got {calls}, {margin}")
        self.clock = clock
        self.calls = calls
        self.margin = margin
        self.choices: dict[Hashable, Choice] = {}
        """key -> the choice made for it: what a report reads to say what was picked here."""

    def run(self, key: Hashable, stock: Callable[[], T], fast: Callable[[], T]) -> T:
        got = self.choices.get(key)
        if got is not None:
            return fast() if got.fast else stock()
        if not timeable():
            return stock()  # no choice yet and none to be made here: the reference path, uncached
        start = self.clock()
        last = {False: stock(), True: fast()}  # warm-up, untimed
        times: dict[bool, list[float]] = {False: [], True: []}
        order = ((False, stock), (True, fast))
        for i in range(self.calls):
            for is_fast, fn in order if i % 2 == 0 else order[::-1]:  # neither always goes second
                t0 = self.clock()
                last[is_fast] = fn()
                times[is_fast].append(self.clock() - t0)
        pairs = zip(times[False], times[True], strict=True)
        ratio = statistics.median([f / s if s > 0 else float("inf") for s, f in pairs])
        pick = ratio < 1.0 - self.margin
        stock_s, fast_s = statistics.median(times[False]), statistics.median(times[True])
        self.choices[key] = Choice(pick, ratio, stock_s, fast_s, self.clock() - start)
        return last[pick]
