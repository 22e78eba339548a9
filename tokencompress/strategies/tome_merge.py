"""ToMe kernels: the r schedule, bipartite soft matching, size-weighted merging and source tracking.

Token Merging (Bolya et al., ICLR 2023, https://arxiv.org/abs/2210.09461) removes ``r`` tokens
per transformer block by merging the most similar pairs between two alternating halves of the
sequence. These are pure functions on ``[B, N, C]`` tensors: a matching step returns ``merge``
and ``unmerge`` closures, so one decision (taken on the attention keys) can be applied to the
tokens, their sizes and their source map alike, and tested on its own against the reference's
golden fixtures. Nothing here holds state between calls.

Reimplemented independently (the reference code is CC-BY-NC and is not copied). Where this
differs from the reference, the result on every non-degenerate input is the same:

- the matching runs in float32 and divides by ``max(norm, eps)`` (a zero metric row gives NaN in
  the reference);
- ranks are a stable sort, so exact ties go to the lower A index (the reference's order of
  exact ties is unspecified);
- ``unmerge`` honours the distillation-token output order (the reference's is wrong there);
- ``parse_r`` gives a one-layer schedule instead of dividing by zero.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "RSpec",
    "MergeMode",
    "MergeFn",
    "UnmergeFn",
    "BipartiteMatch",
    "parse_r",
    "capped_r",
    "match_bipartite",
    "bipartite_soft_matching",
    "merge_wavg",
    "merge_source",
    "merge_owner",
    "unmerge_to_grid",
    "source_from_owner",
]

RSpec = int | Sequence[int] | tuple[int, float]
"""An int (same r every layer), a per-layer list, or a ``(r, inflection)`` tuple."""
MergeMode = Literal["sum", "mean", "amax"]
MergeFn = Callable[..., Tensor]
"""``merge(x [B, N, c], mode="mean") -> [B, N - r, c]``."""
UnmergeFn = Callable[[Tensor], Tensor]
"""``unmerge(x [B, N - r, c]) -> [B, N, c]``: every input position gets its output slot's row."""

_EPS = 1e-12


def parse_r(r: RSpec, num_layers: int) -> list[int]:
    """Per-layer number of tokens to remove, ``len >= num_layers``.

    - ``int``: the same r in every layer.
    - ``list`` (any non-tuple sequence): used as given, zero-padded to ``num_layers`` and never
      truncated (surplus entries are simply not consumed).
    - ``(r, inflection)`` tuple: a linear schedule from ``lo = trunc(r (1 - inflection))`` to
      ``2r - lo``, each entry truncated, so the total is at most ``r * num_layers``. Inflection
      -1 is the paper's decreasing schedule (2r down to 0), +1 increasing, 0 constant; values
      outside [-1, 1] give negative entries, which mean "no merge".

    The reference routes a plain int through the tuple formula and so divides by zero for
    ``num_layers == 1``; here an int needs no formula and a one-layer tuple schedule is its
    first entry ``[lo]`` (the formula's value at layer 0 for any step).
    """
    if isinstance(r, tuple):
        if len(r) != 2:
            raise ValueError(f"an r tuple is (r, inflection), got {r!r}")
        base, inflection = r
        lo = int(base * (1.0 - inflection))
        if num_layers <= 1:
            return [lo] * num_layers
        hi = 2 * base - lo
        step = (hi - lo) / (num_layers - 1)
        return [int(lo + layer * step) for layer in range(num_layers)]
    if isinstance(r, Sequence) and not isinstance(r, str | bytes):
        schedule = [int(v) for v in r]
        return schedule + [0] * max(0, num_layers - len(schedule))
    return [int(r)] * num_layers


def capped_r(r: int, num_tokens: int, protected: int = 0) -> int:
    """Tokens one step really removes: at most half of the ``num_tokens - protected`` free ones.

    A bipartite step can only merge A tokens into B tokens, so it never removes more than
    ``floor((N - p) / 2)``; a larger r is cut down silently, as the reference does.
    """
    return max(0, min(int(r), (num_tokens - protected) // 2))


def _rows(x: Tensor, index: Tensor) -> Tensor:
    """``x`` ``[B, n, c]`` gathered at ``index`` ``[B, k]`` along the token axis -> ``[B, k, c]``."""
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


@dataclass(frozen=True)
class BipartiteMatch:
    """One matching decision, in indices local to the A (even) and B (odd) position sets.

    ``unm_idx`` ``[B, |A| - r]`` are the A tokens that stay, in output order; ``src_idx``
    ``[B, r]`` the A tokens merged away and ``dst_idx`` ``[B, r]`` the B token each one joins.
    Kept as indices rather than only as closures so tests and tracing can read the decision.
    """

    unm_idx: Tensor
    src_idx: Tensor
    dst_idx: Tensor
    num_tokens: int
    distill_token: bool = False

    @property
    def r(self) -> int:
        return self.src_idx.shape[1]

    @property
    def num_out(self) -> int:
        return self.num_tokens - self.r

    def _arrange(self, unm: Tensor, dst: Tensor) -> Tensor:
        """Output order: kept A tokens then all B tokens; the distill token (B[0]) stays second."""
        if self.distill_token:
            return torch.cat([unm[:, :1], dst[:, :1], unm[:, 1:], dst[:, 1:]], dim=1)
        return torch.cat([unm, dst], dim=1)

    def merge(self, x: Tensor, mode: MergeMode = "mean") -> Tensor:
        """``x`` ``[B, N, c]`` -> ``[B, N - r, c]``; each B slot reduces itself with its sources.

        ``mean`` counts the destination once with its sources (sizes ignored), ``sum`` adds
        them, ``amax`` takes the elementwise maximum (for 0/1 source maps).
        """
        a, b = x[:, ::2], x[:, 1::2]
        index = self.dst_idx[..., None].expand(-1, -1, x.shape[-1])
        dst = b.scatter_reduce(1, index, _rows(a, self.src_idx), reduce=mode, include_self=True)
        return self._arrange(_rows(a, self.unm_idx), dst)

    def unmerge(self, x: Tensor) -> Tensor:
        """``x`` ``[B, N - r, c]`` -> ``[B, N, c]``: one step back, every position gets its slot's row."""
        n_unm = self.unm_idx.shape[1]
        if self.distill_token:
            unm = torch.cat([x[:, :1], x[:, 2 : n_unm + 1]], dim=1)
            dst = torch.cat([x[:, 1:2], x[:, n_unm + 1 :]], dim=1)
        else:
            unm, dst = x[:, :n_unm], x[:, n_unm:]
        c = x.shape[-1]
        out = x.new_zeros(x.shape[0], self.num_tokens, c)
        out[:, 1::2] = dst
        out.scatter_(1, (2 * self.unm_idx)[..., None].expand(-1, -1, c), unm)
        out.scatter_(1, (2 * self.src_idx)[..., None].expand(-1, -1, c), _rows(dst, self.dst_idx))
        return out

    def anchor_index(self) -> Tensor:
        """``[B, N - r]`` input position of the token each output slot keeps (the output ORDER)."""
        batch = self.unm_idx.shape[0]
        odd = torch.arange(1, self.num_tokens, 2, device=self.unm_idx.device).expand(batch, -1)
        return self._arrange((2 * self.unm_idx)[..., None], odd[..., None])[..., 0]

    def slot_index(self) -> Tensor:
        """``[B, N]`` output slot that each input position ends up in."""
        batch = self.unm_idx.shape[0]
        slots = torch.arange(self.num_out, device=self.unm_idx.device).expand(batch, -1)
        return self.unmerge(slots[..., None])[..., 0]


def match_bipartite(
    metric: Tensor, r: int, class_token: bool = False, distill_token: bool = False
) -> BipartiteMatch | None:
    """Decide one ToMe step on ``metric`` ``[B, N, c]``; None when nothing can merge.

    Per sample: cosine similarity between A = even and B = odd positions, each A token's best B
    partner, and the ``r`` A tokens with the highest best score merge into their partners.
    ``r`` is capped to ``floor((N - p) / 2)`` with ``p`` protected tokens (see :func:`capped_r`).
    A class token (position 0) can never be a source, and it never receives because it is in A;
    a distillation token (position 1) can never be a destination. With a class token the kept A
    tokens are put back in position order; without one they stay in decreasing-score order, so
    the output order is data-dependent.
    """
    n = metric.shape[1]
    r = capped_r(r, n, int(class_token) + int(distill_token))
    if r <= 0:
        return None
    with torch.no_grad():
        m = metric.float()
        m = m / m.norm(dim=-1, keepdim=True).clamp_min(_EPS)
        # one 2-D matmul per sample on a fresh copy: batched matmuls (and views at an offset) round a sample's scores
        # differently depending on the rest of the batch, which would let other frames flip its near ties
        scores = torch.stack(
            [x.clone() @ y.clone().T for x, y in zip(m[:, ::2], m[:, 1::2], strict=True)]
        )  # [B, |A|, |B|]
        if class_token:
            scores[:, 0, :] = -torch.inf
        if distill_token:
            scores[:, :, 0] = -torch.inf
        best, partner = scores.max(dim=-1)  # [B, |A|]
        ranked = torch.sort(best, dim=-1, descending=True, stable=True).indices
        src_idx, unm_idx = ranked[:, :r], ranked[:, r:]
        dst_idx = partner.gather(1, src_idx)
        if class_token:
            unm_idx = torch.sort(unm_idx, dim=-1).values
    return BipartiteMatch(unm_idx, src_idx, dst_idx, n, distill_token)


def _keep(x: Tensor, mode: MergeMode = "mean") -> Tensor:
    return x


def bipartite_soft_matching(
    metric: Tensor, r: int, class_token: bool = False, distill_token: bool = False
) -> tuple[MergeFn, UnmergeFn]:
    """``(merge, unmerge)`` closures for one ToMe step decided on ``metric`` ``[B, N, c]``.

    See :func:`match_bipartite` for the decision; when ``r`` caps to 0 both closures return
    their input unchanged. ``merge`` ``[B, N, c] -> [B, N - r, c]``, ``unmerge`` the reverse.
    """
    match = match_bipartite(metric, r, class_token, distill_token)
    if match is None:
        return _keep, _keep
    return match.merge, match.unmerge


def merge_wavg(merge: MergeFn, x: Tensor, size: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Size-weighted merge of ``x`` ``[B, N, C]`` with ``size`` ``[B, N, 1]`` (None = ones).

    Returns ``(x', size')``: each slot is the mean of its members weighted by how many original
    tokens each stands for, so a merged token keeps the weight of all its originals in later
    merges, proportional attention and pooling. Computed as merge(x·s, sum) / merge(s, sum).
    """
    if size is None:
        size = torch.ones_like(x[..., :1])
    merged = merge(x * size, mode="sum")
    size = merge(size, mode="sum")
    return merged / size, size


def merge_source(merge: MergeFn, x: Tensor, source: Tensor | None = None) -> Tensor:
    """Update the 0/1 source map ``[B, N, N0]`` (None = identity over ``x``'s N) -> ``[B, N - r, N0]``.

    Row k marks the original tokens inside slot k; a slot's row is the OR of its members'.
    Costs O(N·N0) per sample; :func:`merge_owner` carries the same information in O(N0).
    """
    if source is None:
        b, n, _ = x.shape
        source = torch.eye(n, dtype=x.dtype, device=x.device)[None].expand(b, n, n)
    return merge(source, mode="amax")


def merge_owner(unmerge: UnmergeFn, x_merged: Tensor, owner: Tensor | None = None) -> Tensor:
    """Update ``owner`` ``[B, N0]`` (slot of every original token; None = identity) for one step.

    ``x_merged`` ``[B, N - r, C]`` is the step's output, used only for its shape: un-merging the
    slot numbers gives each input position's new slot, which the original tokens follow.
    """
    b, n_out = x_merged.shape[:2]
    slots = torch.arange(n_out, device=x_merged.device).expand(b, -1)
    slot_of_input = unmerge(slots[..., None])[..., 0]  # [B, N]
    return slot_of_input if owner is None else slot_of_input.gather(1, owner)


def unmerge_to_grid(x: Tensor, owner: Tensor) -> Tensor:
    """``x`` ``[B, K, C]`` copied back to every original position: ``[B, N0, C]``, ``grid[j] = x[owner[j]]``.

    Stock pooling and patch mergers after the tower need the full grid in raster order
    (docs/design.md §4); this is the exact "un-merge via source" layout.
    """
    return _rows(x, owner)


def source_from_owner(owner: Tensor, num_slots: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Dense 0/1 source map ``[B, num_slots, N0]`` from ``owner`` ``[B, N0]``."""
    b, n0 = owner.shape
    source = torch.zeros(b, num_slots, n0, dtype=dtype, device=owner.device)
    return source.scatter_(1, owner[:, None], 1)
