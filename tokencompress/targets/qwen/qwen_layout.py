"""How one chunk's packed Qwen-VL vision sequence maps to per-slice frames.

The Qwen vision tower packs every patch of a chunk into one ``[N, C]`` sequence. Strategies
want ``[F, T, C]`` (one row per temporal slice of ``temporal_patch_size`` frames, ``T = h·w``
patches), always in the same token order. Qwen2-VL packs in 2×2 merge-block order already;
Qwen2.5-VL additionally permutes merge blocks into window order for its windowed blocks, so a
layout carries the permutation that undoes it. Frames are therefore in merge-block order on
both models: every ``m²`` consecutive tokens form one merged LLM token.

A layout depends on the chunk (its grid), not on the layer, and a windowed block's call does
not reveal the slice length (its ``cu_seqlens`` are windows). The target therefore publishes
the running chunk's layout in a :class:`LayoutSlot` that its block adapters read. Chunks run
one at a time through a patched model (``BlockPatch`` holds a lock), so one slot per target
is enough. The slot also memoizes what the adapters derive from a block call's arguments
(frames-order rotary tables, window ids): the tower passes the same ``cu_seqlens`` and rotary
tensors to every block, so that work is done once per chunk and variant, not once per layer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor

__all__ = ["ChunkLayout", "LayoutSlot", "merge_block_positions"]

_T = TypeVar("_T")


@dataclass(frozen=True)
class ChunkLayout:
    """Token order of one chunk of ``grid = (t, h, w)`` patches (``t`` slices of ``h×w``).

    ``order`` ``[N]`` (N = t·h·w) gives, for every token in frames order (slice-major,
    merge-block order inside a slice), its index in the packed sequence the blocks see;
    None when both orders coincide (Qwen2-VL).
    """

    grid: tuple[int, int, int]
    merge: int
    order: Tensor | None = None
    inverse: Tensor | None = None
    """``argsort(order)``: frames-order index of every packed token."""

    @property
    def slice_tokens(self) -> int:
        return self.grid[1] * self.grid[2]

    @classmethod
    def build(cls, grid_thw: Tensor, vision_config: Any, windowed: bool) -> ChunkLayout:
        """The layout the installed tower uses for ``grid_thw`` ``[[t, h, w]]``.

        For windowed towers the window permutation comes from transformers' own
        ``get_vision_window_index`` with the tower's config, so it is the one the model applies.
        """
        t, h, w = (int(v) for v in grid_thw[0].tolist())
        m = int(vision_config.spatial_merge_size)
        if not windowed:
            return cls((t, h, w), m)
        from transformers.vision_utils import get_vision_window_index

        window_index, _ = get_vision_window_index(
            grid_thw.cpu(),
            spatial_merge_size=m,
            window_size=vision_config.window_size,
            patch_size=vision_config.patch_size,
        )
        # window_index[j] = raster merged token held by packed merged position j
        packed_of_merged = torch.argsort(window_index)
        unit = m * m
        order = (packed_of_merged[:, None] * unit + torch.arange(unit)).reshape(-1)
        dev = grid_thw.device
        return cls((t, h, w), m, order.to(dev), torch.argsort(order).to(dev))

    def to_frames(self, packed: Tensor) -> Tensor:
        """``[N, ...]`` packed → ``[t, h·w, ...]`` in merge-block order."""
        x = packed if self.order is None else packed.index_select(0, self.order.to(packed.device))
        return x.reshape(self.grid[0], self.slice_tokens, *packed.shape[1:])

    def from_frames(self, frames: Tensor) -> Tensor:
        """Inverse of :meth:`to_frames`."""
        flat = frames.reshape(-1, *frames.shape[2:])
        return flat if self.inverse is None else flat.index_select(0, self.inverse.to(flat.device))


def merge_block_positions(h: int, w: int, merge: int, device: torch.device | None = None) -> Tensor:
    """``[h·w, 2]`` (row, col) of every patch of one slice, listed in merge-block order.

    Merge blocks go row-major over the ``(h/m) × (w/m)`` merged grid; inside a block the
    ``m × m`` patches go row-major too (the order ``PatchMerger``'s ``view(-1, m²·C)`` groups).
    """
    rows = torch.arange(h, device=device).view(h // merge, merge, 1, 1).expand(-1, -1, w // merge, merge)
    cols = torch.arange(w, device=device).view(1, 1, w // merge, merge).expand(h // merge, merge, -1, -1)
    # (block_row, in_row, block_col, in_col) -> (block_row, block_col, in_row, in_col)
    rows = rows.permute(0, 2, 1, 3).reshape(-1)
    cols = cols.permute(0, 2, 1, 3).reshape(-1)
    return torch.stack((rows, cols), dim=1)


class LayoutSlot:
    """The layout of the chunk running through the tower now (None between chunks).

    Each :meth:`use` also opens a memo (:meth:`memoize`) that lives exactly as long as that
    use: it is dropped when the chunk ends, and a later chunk (or the same layout published
    again) starts from an empty one, so nothing derived for one chunk is seen by another.
    """

    max_memo_entries = 8
    """Distinct keys memoized per chunk (Qwen2-VL needs 1, Qwen2.5-VL 2); past it, derive uncached."""

    def __init__(self) -> None:
        self.current: ChunkLayout | None = None
        self._memo: dict[tuple[Any, ...], tuple[tuple[Tensor, ...], Any]] | None = None

    @contextmanager
    def use(self, layout: ChunkLayout) -> Iterator[ChunkLayout]:
        previous = self.current, self._memo
        self.current, self._memo = layout, {}
        try:
            yield layout
        finally:
            self.current, self._memo = previous

    def memoize(self, key: tuple[Tensor, ...], derive: Callable[[], _T]) -> _T:
        """``derive()``, computed once per distinct ``key`` tensors while the current chunk runs.

        Tensors are matched by identity (plus shape), with no host sync. The memo holds the key
        tensors, so their ids cannot be reused by other tensors while it lives. Outside
        :meth:`use` nothing is memoized.
        """
        memo = self._memo
        if memo is None:
            return derive()
        ident = tuple((id(t), tuple(t.shape)) for t in key)
        hit = memo.get(ident)
        if hit is not None and all(a is b for a, b in zip(hit[0], key, strict=True)):
            return hit[1]
        value = derive()
        if len(memo) < self.max_memo_entries:
            memo[ident] = (key, value)
        return value
