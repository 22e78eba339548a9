"""The token carrier: visual tokens of one chunk plus everything that must stay aligned with them.

Strategies never slice ``tokens`` by hand. They call :meth:`VisualTokens.take` (pruning) or
:meth:`VisualTokens.merge` (merging), which update every aligned field in one place, so a target
can always rebuild what its model needs (grid positions, M-RoPE ids, placeholder counts) from
what survived.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

__all__ = ["VisualTokens", "is_channel_major"]


@dataclass(frozen=True)
class VisualTokens:
    """Visual tokens of one chunk of ``num_frames`` frames, flattened frame-major.

    Fields (``N`` = current tokens, ``N0`` = tokens the chunk had when this carrier was built):

    - ``tokens``  ``[N, D]``: the features.
    - ``frame``   ``[N]`` long: stream frame index (``t``) of every token.
    - ``pos``     ``[N, 2]`` long: (row, col) on ``grid`` of the token that represents the row.
    - ``source``  ``[N]`` long: index of that token in the original ``[N0]`` layout.
    - ``sizes``   ``[N]`` float: how many original tokens each row stands for (1 unless merged).
    - ``assign``  ``[N0]`` long: the row each original token lives in now, ``-1`` if dropped.

    Rows are always in original order: sorted by ``source``, hence by frame, then row-major.
    """

    tokens: Tensor
    frame: Tensor
    pos: Tensor
    source: Tensor
    sizes: Tensor
    assign: Tensor
    grid: tuple[int, int]
    num_frames: int
    first_frame: int = 0

    @classmethod
    def from_frames(cls, x: Tensor, grid: tuple[int, int], first_frame: int = 0) -> VisualTokens:
        """Wrap ``x`` ``[F, H*W, D]`` laid out row-major on ``grid`` = (H, W)."""
        if x.dim() != 3:
            raise ValueError(f"expected [frames, tokens, dim], got shape {tuple(x.shape)}")
        f, t, d = x.shape
        h, w = grid
        if h * w != t:
            raise ValueError(f"grid {h}x{w} does not hold {t} tokens per frame")
        dev = x.device
        n0 = f * t
        idx = torch.arange(n0, device=dev)
        local = idx % t
        return cls(
            tokens=x.reshape(n0, d),
            frame=idx // t + first_frame,
            pos=torch.stack((local // w, local % w), dim=1),
            source=idx,
            sizes=torch.ones(n0, dtype=torch.float32, device=dev),  # counts stay exact in bf16/fp16 models
            assign=idx.clone(),
            grid=(h, w),
            num_frames=f,
            first_frame=first_frame,
        )

    # ----------------------------------------------------------------- views
    @property
    def count(self) -> int:
        return self.tokens.shape[0]

    @property
    def dim(self) -> int:
        return self.tokens.shape[1]

    @property
    def tokens_per_frame_in(self) -> int:
        """Tokens one frame had on the original grid."""
        return self.grid[0] * self.grid[1]

    def counts(self) -> Tensor:
        """``[F]`` tokens currently held per frame."""
        return torch.bincount(self.frame - self.first_frame, minlength=self.num_frames)

    def is_full_grid(self) -> bool:
        """True while nothing was dropped or merged (stock pooling/mergers need this)."""
        return self.count == self.num_frames * self.tokens_per_frame_in

    def local_index(self) -> Tensor:
        """``[N]`` index of each row's representative inside its own frame (row-major)."""
        return self.pos[:, 0] * self.grid[1] + self.pos[:, 1]

    def dense(self) -> Tensor:
        """``[F, n, D]``; only when every frame holds the same number of tokens."""
        counts = self.counts()
        if self.num_frames and not bool((counts == counts[0]).all()):
            raise ValueError(f"frames hold different token counts {counts.tolist()}; split rows by counts()")
        return self.tokens.view(self.num_frames, -1, self.dim)

    # ------------------------------------------------------------ transforms
    def with_tokens(self, tokens: Tensor) -> VisualTokens:
        """Same bookkeeping, new features (e.g. after a projector)."""
        if tokens.shape[0] != self.count:
            raise ValueError(f"with_tokens needs {self.count} rows, got {tokens.shape[0]}")
        return replace(self, tokens=tokens)

    def take(self, index: Tensor) -> VisualTokens:
        """Keep rows ``index`` (1-D, strictly increasing, so the original order is kept).

        Every field is gathered with one ``index_select`` (a fraction of advanced indexing's cost
        on the ``[N, D]`` features); a negative index counts from the end, as in ``tensor[index]``.
        """
        dev = self.tokens.device
        if index.dtype != torch.long or index.device != dev:
            index = index.to(device=dev, dtype=torch.long)
        if index.dim() != 1:
            raise ValueError("take() needs a 1-D index")
        if index.numel() > 1 and not bool(torch.diff(index).min() > 0):
            raise ValueError("take() needs strictly increasing indices (original order must be kept)")
        if index.numel() and int(index[0]) < 0:  # once increasing, a negative index leads
            index = torch.where(index < 0, index + self.count, index)
        return self.take_ascending(index)

    def take_ascending(self, index: Tensor) -> VisualTokens:
        """:meth:`take` of an index already known to be a 1-D long tensor on this device, strictly
        increasing and within ``[0, N)`` (a selection's own output), without checking it.

        A per-frame pruner runs this once a chunk on a few hundred rows, where each check is a
        tensor op and a read-back that cost as much as the gathers. While the carrier still holds
        its full grid (nothing dropped or merged: ``source`` and ``assign`` are ``0..N0-1`` and every
        ``sizes`` is 1, the invariants of the fields), ``source`` is the index itself and ``sizes``
        a slice, so the gather is three ``index_select`` calls and the ``assign`` scatter.
        """
        dev = self.tokens.device
        k = index.numel()
        tokens = _gather_rows(self.tokens, index)
        frame = self.frame.index_select(0, index)
        pos = self.pos.index_select(0, index)
        n = self.tokens.shape[0]
        if n == self.assign.shape[0]:  # full grid: source = assign = 0..N0-1, sizes = 1
            assign = torch.full((n,), -1, dtype=torch.long, device=dev)
            assign.index_copy_(0, index, self.source[:k])  # source is 0..N0-1: its head is arange(k)
            return replace(
                self, tokens=tokens, frame=frame, pos=pos, source=index, sizes=self.sizes[:k], assign=assign
            )
        # remap[r]: new row of old row r, -1 if dropped; its extra last entry (-1) is what a dropped
        # original (assign -1) reads, since take() counts a negative index from the end
        remap = torch.full((self.count + 1,), -1, dtype=torch.long, device=dev)
        remap.index_copy_(0, index, torch.arange(k, device=dev))
        return replace(
            self,
            tokens=tokens,
            frame=frame,
            pos=pos,
            source=self.source.index_select(0, index),
            sizes=self.sizes.index_select(0, index),
            assign=torch.take(remap, self.assign),
        )

    def regroup(self, owner: Tensor, anchor: Tensor, tokens: Tensor) -> VisualTokens:
        """Drop and merge rows in one step: the carrier of ``take`` of the owned rows followed by
        ``merge`` with anchors, from a few gathers (a per-frame strategy step at stream rate).

        ``owner`` ``[N]`` long: the output row (``0..G-1``) every row goes into, ``-1`` to drop it;
        ``anchor`` ``[G]`` strictly increasing: the row whose frame, position and source each output
        row keeps (it must be owned by that output row); ``tokens`` ``[G, D]``: the output features.
        ``sizes`` add up over the members (in row order, as ``merge`` adds them), ``assign`` follows.
        Output rows stay in original order since the anchors increase; groups must not span frames.
        """
        dev = self.tokens.device
        owner = owner.to(device=dev, dtype=torch.long)
        anchor = anchor.to(device=dev, dtype=torch.long)
        g = anchor.numel()
        if owner.shape != (self.count,):
            raise ValueError(f"regroup() needs one owner per row ({self.count}), got {tuple(owner.shape)}")
        if tokens.shape[0] != g:
            raise ValueError(f"regroup() got {tokens.shape[0]} rows for {g} anchors")
        if g > 1 and not bool(torch.diff(anchor).min() > 0):
            raise ValueError("regroup() needs strictly increasing anchors (original order must be kept)")
        if self.count:
            lo, hi = torch.aminmax(owner)
            if int(lo) < -1 or int(hi) >= g:
                raise ValueError(f"regroup() owners must lie in [-1, {g})")
        if g and not torch.equal(owner.index_select(0, anchor), torch.arange(g, device=dev)):
            raise ValueError("regroup(): every anchor row must belong to its own output row")
        dropped = owner < 0
        frame = self.frame.index_select(0, anchor)
        if g and not bool(((frame.index_select(0, owner.clamp(min=0)) == self.frame) | dropped).all()):
            raise ValueError("regroup() groups must not mix frames")
        into = owner.masked_fill(dropped, g)  # dropped rows add into a spare row g
        sizes = torch.zeros(g + 1, dtype=self.sizes.dtype, device=dev).index_add_(0, into, self.sizes)[:g]
        # assign: an original's row moves to its row's owner; -1 (dropped before) reads the appended -1
        assign = torch.take(torch.cat([owner, owner.new_full((1,), -1)]), self.assign)
        return replace(
            self,
            tokens=tokens,
            frame=frame,
            pos=self.pos.index_select(0, anchor),
            source=self.source.index_select(0, anchor),
            sizes=sizes,
            assign=assign,
        )

    def merge(
        self, group: Tensor, tokens: Tensor | None = None, anchor: Tensor | None = None
    ) -> VisualTokens:
        """Merge rows that share a group id; groups must not span frames.

        By default ``group`` ``[N]`` may hold any ids; each group becomes the size-weighted mean of
        its rows and is represented by its first (lowest-source) member. A method with its own
        arithmetic (VisionZip's "target + mean of members") passes dense ids ``0..G-1`` with
        ``anchor`` ``[G]`` (the row whose position represents each group) and ``tokens`` ``[G, D]``
        (the merged features). Output rows are ordered by their anchor, so original order holds.
        """
        group = group.to(device=self.tokens.device, dtype=torch.long)
        if group.shape != (self.count,):
            raise ValueError(f"merge() needs one group id per row ({self.count}), got {tuple(group.shape)}")
        dev = self.tokens.device
        if anchor is None:
            uniq, inverse = torch.unique(group, return_inverse=True)
            g = uniq.numel()
            anchor = torch.full((g,), self.count, dtype=torch.long, device=dev)
            anchor = anchor.scatter_reduce(0, inverse, torch.arange(self.count, device=dev), reduce="amin")
        else:
            anchor = anchor.to(device=dev, dtype=torch.long)
            g = anchor.numel()
            inverse = group
            if self.count and (int(group.min()) < 0 or int(group.max()) >= g):
                raise ValueError(f"merge() group ids must lie in [0, {g}) when anchors are given")
            if not bool((group[anchor] == torch.arange(g, device=dev)).all()):
                raise ValueError("merge(): every anchor row must belong to its own group")
        order = torch.argsort(anchor)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(g, device=dev)
        out_row = rank[inverse]
        if not bool((self.frame[anchor][inverse] == self.frame).all()):
            raise ValueError("merge() groups must not mix frames")
        sizes = torch.zeros(g, dtype=self.sizes.dtype, device=dev).index_add_(0, inverse, self.sizes)
        if tokens is None:
            weighted = self.tokens.float() * self.sizes[:, None].float()  # float32 sums, cast back once
            summed = torch.zeros(g, self.dim, dtype=torch.float32, device=dev).index_add_(
                0, inverse, weighted
            )
            tokens = (summed / sizes[:, None].float()).to(self.tokens.dtype)
        elif tokens.shape[0] != g:
            raise ValueError(f"merge() got {tokens.shape[0]} merged rows for {g} groups")
        rep = anchor[order]
        alive = self.assign >= 0
        if out_row.numel():
            assign = torch.where(alive, out_row[self.assign.clamp(min=0)], self.assign)
        else:  # no rows left: every original already reads -1 (nothing to look up)
            assign = self.assign.clone()
        return replace(
            self,
            tokens=tokens[order],
            frame=self.frame[rep],
            pos=self.pos[rep],
            source=self.source[rep],
            sizes=sizes[order],
            assign=assign,
        )


def _gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """``x[index]`` for ``x`` ``[N, D]``, read in the layout ``x`` is stored in.

    LLaVA-OneVision's pooling hands over channel-major features (``[N, D]`` with strides
    ``(1, N)``), where ``index_select`` along rows reads ``D`` scattered values per output row;
    gathering the columns of the ``[D, N]`` transpose reads contiguous runs instead (about half
    the time at 60 of 196 rows of width 896). The result keeps the input's layout; the values are
    the same either way.
    """
    if is_channel_major(x):
        return x.T.index_select(1, index).T
    return x.index_select(0, index)


def is_channel_major(x: Tensor) -> bool:
    """True for an ``[N, D]`` tensor stored as its ``[D, N]`` transpose (strides ``(1, N)``, ``N > 1``):
    how LLaVA-OneVision's pooling hands over its features, which gathers read in that layout."""
    return x.dim() == 2 and x.shape[0] > 1 and x.stride(0) == 1 and x.stride(1) == x.shape[0]
