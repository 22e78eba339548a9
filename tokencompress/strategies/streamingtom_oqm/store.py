"""One layer's quantised store: every stored group's codes, scales, minima and group key.

Groups are rows ``[n, ...]`` of a few named fields (``k_packed`` ``[n, kvh, G/p, d]`` uint8,
``k_scales`` / ``k_mins`` ``[n, kvh, d]``, the same for ``v``, and ``keys`` ``[n, kvh * d]``
float32), kept in slabs of ``slab_groups`` rows so that a chunk appends in a step of at most one
slab (the reference concatenates the whole layer's store at every question instead). The store
also records its storage batches: how many groups each chunk added, which the encoding window's
rule walks. Tensors are never written in place: the open slab is replaced by a concatenation, full
slabs never change, so holding the references and counts is a snapshot.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["GroupStore", "QUANT_FIELDS"]

QUANT_FIELDS = ("k_packed", "k_scales", "k_mins", "v_packed", "v_scales", "v_mins")


class GroupStore:
    """Rows of named fields in slabs; ``add`` appends one storage batch."""

    def __init__(self, slab_groups: int = 256) -> None:
        self.slab_groups = slab_groups
        self.full: list[dict[str, Tensor]] = []
        self.open: dict[str, Tensor] | None = None
        self.count = 0
        self.batches: list[int] = []

    def __len__(self) -> int:
        return self.count

    def add(self, rows: dict[str, Tensor]) -> None:
        """Append ``m`` groups (every field ``[m, ...]``) as one storage batch."""
        m = next(iter(rows.values())).shape[0]
        done = 0
        while done < m:
            held = 0 if self.open is None else next(iter(self.open.values())).shape[0]
            take = min(self.slab_groups - held, m - done)
            part = {name: t[done : done + take] for name, t in rows.items()}
            if self.open is None:
                self.open = {name: t.clone() for name, t in part.items()}
            else:
                self.open = {name: torch.cat((self.open[name], part[name])) for name in part}
            if held + take == self.slab_groups:
                self.full.append(self.open)
                self.open = None
            done += take
        self.count += m
        self.batches.append(m)

    def _slab(self, index: int) -> dict[str, Tensor]:
        if index < len(self.full):
            return self.full[index]
        assert self.open is not None
        return self.open

    def gather(self, ids: Tensor, fields: tuple[str, ...] = QUANT_FIELDS) -> dict[str, Tensor]:
        """Rows ``ids`` (ascending or not; the given order) of ``fields``."""
        ids = ids.to("cpu", torch.long)
        slab, row = ids // self.slab_groups, ids % self.slab_groups
        parts: dict[str, list[Tensor]] = {name: [] for name in fields}
        order: list[Tensor] = []
        for s in torch.unique(slab).tolist():
            at = torch.nonzero(slab == s).reshape(-1)
            data = self._slab(int(s))
            for name in fields:
                parts[name].append(data[name][row[at].to(data[name].device)])
            order.append(at)
        if not order:
            return {name: self._empty(name) for name in fields}
        back = torch.argsort(torch.cat(order))
        return {name: torch.cat(parts[name])[back.to(parts[name][0].device)] for name in fields}

    def span(self, start: int, fields: tuple[str, ...] = QUANT_FIELDS) -> dict[str, Tensor]:
        """Rows ``start..count`` of ``fields`` in order."""
        return self.gather(torch.arange(start, self.count), fields)

    def _empty(self, name: str) -> Tensor:
        if not self.full and self.open is None:
            raise ValueError("the store is empty")
        t = self._slab(0)[name]
        return t[:0]

    def nbytes(self, fields: tuple[str, ...] = QUANT_FIELDS) -> int:
        """Bytes of the stored rows of ``fields`` (slabs hold exactly their rows)."""
        total = 0
        for data in (*self.full, *([self.open] if self.open is not None else [])):
            total += sum(data[name].numel() * data[name].element_size() for name in fields)
        return total

    def snapshot(self) -> tuple[Any, ...]:
        return list(self.full), self.open, self.count, list(self.batches)

    def restore(self, snapshot: tuple[Any, ...]) -> None:
        full, self.open, self.count, batches = snapshot
        self.full, self.batches = list(full), list(batches)
