"""Measurements that are not wall time: FLOPs through the target's vision seam, peak memory,
KV-cache size and machine load.

FLOPs come from ``torch.utils.flop_counter`` in an untimed pass, because counting runs every op
through Python and would swamp the timings. The "ViT" share is whatever runs inside the
target's :meth:`~tokencompress.api.target.Target.vision_module`, read off the counter by a forward
pre-hook and a forward hook on that module (removed on exit); nothing of the target is replaced.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

__all__ = ["FlopTally", "count_flops", "kv_bytes", "load_average", "peak_memory"]


def _cpu_sdpa_flops(
    query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any
) -> int:
    """torch's counter has formulas for the CUDA attention kernels only; on CPU, SDPA lowers to
    this op and would count as zero, losing the 2·T²·C attention term of every layer."""
    return sdpa_flop_count(query, key, value)


def _packed_linear_flops(x: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """oneDNN linears on prepacked weights (:mod:`tokencompress.kernels.packed_linear`): 2·M·K·N, read off
    the input ``[M, K]`` and output ``[M, N]`` shapes, since the packed weight's shape is opaque."""
    rows, inner = x  # the counter passes shapes
    return 2 * rows * inner * out_shape[-1]


_CUSTOM_FLOPS: dict[Any, Any] = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}
if hasattr(torch.ops.mkldnn, "_linear_pointwise"):
    _CUSTOM_FLOPS[torch.ops.mkldnn._linear_pointwise] = _packed_linear_flops  # both overloads


@dataclass
class FlopTally:
    """FLOPs of one counted block: all of it, and the part inside the target's vision module."""

    total: int = 0
    vision: int = 0
    vision_calls: int = 0


@contextmanager
def count_flops(target: Any) -> Iterator[FlopTally]:
    """Count the FLOPs of the ``with`` block; ``tally`` is filled when the block exits."""
    tally = FlopTally()
    module = target.vision_module()
    with FlopCounterMode(display=False, custom_mapping=_CUSTOM_FLOPS) as counter:
        handles = []
        if module is not None:
            entered: list[int] = []

            def pre(*_: Any) -> None:
                entered.append(counter.get_total_flops())

            def post(*_: Any) -> None:
                tally.vision += counter.get_total_flops() - entered.pop()
                tally.vision_calls += 1

            handles = [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
        try:
            yield tally
        finally:
            for h in handles:
                h.remove()
    tally.total = int(counter.get_total_flops())
    tally.vision = int(tally.vision)


def kv_bytes(cache: Any) -> int:
    total = 0
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, Tensor):
                total += t.nbytes
    return total


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # pragma: no cover - not POSIX
        return None


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, Any]]:
    """Peak extra memory of the block, in the most direct way this machine allows.

    CUDA reports its allocator's high-water mark exactly. On CPU there is no such counter, so
    resident memory is sampled; freed memory that the C allocator keeps is invisible to it, which
    is why the heap is trimmed first and why the figure is marked approximate.
    """
    out: dict[str, Any] = {"bytes": None, "method": None, "approximate": True}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        yield out
        torch.cuda.synchronize(device)
        out.update(
            bytes=int(torch.cuda.max_memory_allocated(device) - start),
            method="cuda max_memory_allocated",
            approximate=False,
        )
        return
    _trim_heap()
    rss = _rss_reader()
    if rss is not None:
        start = rss()
        peak = [start]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.005):
                peak[0] = max(peak[0], rss())

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield out
        finally:
            stop.set()
            thread.join()
            peak[0] = max(peak[0], rss())
        out.update(bytes=int(peak[0] - start), method="sampled RSS delta every 5 ms (approximate)")
        return
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        yield out
        return
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB elsewhere
    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield out
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start
    out.update(
        bytes=int(grown * scale),
        method="process max-RSS growth (approximate; 0 if an earlier peak was higher)",
    )


def _rss_reader() -> Callable[[], int] | None:
    path = "/proc/self/statm"
    if not os.path.exists(path):
        return None
    page = os.sysconf("SC_PAGE_SIZE")

    def read() -> int:
        with open(path) as fh:
            return int(fh.read().split()[1]) * page

    return read


def _trim_heap() -> None:
    """Give freed heap back to the OS so an earlier variant's peak does not hide this one's."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
