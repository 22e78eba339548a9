"""StreamingTOM's causal temporal reduction, one frame at a time: the arithmetic of the reference.

The strategy (:mod:`.streamingtom_ctr`) obtains features and saliency from the model and maps the
result onto the token carrier; this module only decides, per frame, which positions survive and
what their features become. Every step follows the authors' ``streamingtom/modules/ctr.py`` as
the golden fixtures pin it down (quirk numbers Q1-Q9 as in :mod:`.streamingtom_ctr`):

1. :func:`static_masks`: a token is static when its cosine (``F.normalize``, eps 1e-12, float32)
   to the same grid position of the previous *raw* frame is strictly above the threshold (Q9:
   a zero vector has cosine 0, so it is dynamic). The first frame of a stream is all dynamic.
2. Budget: ``b_s = floor(G * n_s / N)`` static slots (Q6: floor, so with ``G * n_s < N`` the
   static tokens get no slot and are dropped), ``b_d = G - b_s`` dynamic slots.
3. :func:`dpc_centres`: density-peak clustering (DPC-kNN) of the static tokens. Distances are
   ``torch.cdist / sqrt(D)`` in float32 (Q2: the default compute mode, whose matmul path leaves a
   tiny positive diagonal the ``k = 1`` case depends on); the density counts the self-distance
   among the ``k`` nearest (Q2); the density gets ``1e-6 * U[0, 1)`` noise (Q3); ``delta`` is the
   distance to the nearest token of *lower* density (Q1; the least dense token gets the global
   maximum distance). The ``b_s`` highest ``density * delta`` are the centres.
4. :func:`merge_members`: every other static token joins its nearest centre (first on ties);
   a centre becomes ``beta * centre + (1 - beta) * mean(members)``, unchanged without members (Q7).
5. Dynamic tokens: the ``b_d`` highest saliency values, rows copied.
6. Output rows sorted by grid position, exactly ``G`` per frame.

Deterministic choices where the reference leaves the order to ``torch.topk`` (exact ties of the
centre score or of the saliency): the higher score wins, then the lower position. Both only
matter at exact ties, which the fixtures list as acceptable alternatives.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "FrameReduction",
    "normalized_rows",
    "static_masks",
    "dpc_centres",
    "merge_members",
    "reduce_frame",
    "top_positions",
]

NOISE_SCALE = 1e-6
"""The reference adds ``rand * 1e-6`` to the DPC densities (``ctr.py``)."""

Noise = Callable[[int], Tensor]
"""``noise(n)`` → ``[n]`` float32 draws in ``[0, 1)`` for one frame's DPC densities."""


@dataclass(frozen=True)
class FrameReduction:
    """One frame's decision. ``G`` output rows, ``N`` grid positions of the frame.

    ``kept`` ``[G]`` long: grid positions of the output rows, ascending (the output order).
    ``from_static`` ``[G]`` bool: the row is a DPC centre (its feature is the merged one).
    ``rows`` ``[G, D]``: output features (dynamic rows are copies of the input rows).
    ``owner`` ``[N]`` long: output row (``0..G-1``) every grid position lives in, ``-1`` if dropped.
    """

    kept: Tensor
    from_static: Tensor
    rows: Tensor
    owner: Tensor
    n_static: int
    static_budget: int


def normalized_rows(x: Tensor) -> Tensor:
    """``F.normalize`` (eps 1e-12) of ``x``'s last dim in float32, on contiguous rows (``[..., D]``).

    Rows are made contiguous first: a strided row (a target's transposed pooled grid) is summed in
    another order, so the last bit of a cosine would follow the target's memory layout, and that
    reduction is many times slower.
    """
    return F.normalize(x.float().contiguous(), dim=-1, eps=1e-12)


def static_masks(
    x: Tensor,
    prev: Tensor | None,
    threshold: float,
    normed: Tensor | None = None,
    prev_normed: Tensor | None = None,
) -> Tensor:
    """``[T, N]`` bool: cosine of ``x[t, i]`` to the previous raw frame's token ``i`` > ``threshold``.

    ``x`` ``[T, N, D]``; ``prev`` ``[N, D]`` is the last raw frame before ``x[0]`` (None at the
    start of a stream: frame 0 is then all dynamic). ``normed`` ``[T, N, D]`` and ``prev_normed``
    ``[N, D]``, when given, are :func:`normalized_rows` of ``x`` and ``prev`` (a stream carries the
    previous chunk's last row set instead of normalising that frame twice); the result is the same.
    """
    xn = normalized_rows(x) if normed is None else normed
    if prev is None:
        if x.shape[0] == 1:
            return torch.zeros(1, x.shape[1], dtype=torch.bool, device=x.device)
        head = torch.zeros(1, x.shape[1], dtype=torch.bool, device=x.device)
        return torch.cat([head, (xn[1:] * xn[:-1]).sum(dim=-1) > threshold])
    pn = (normalized_rows(prev) if prev_normed is None else prev_normed)[None]
    ref = pn if x.shape[0] == 1 else torch.cat([pn, xn[:-1]])
    return (xn * ref).sum(dim=-1) > threshold


def top_positions(scores: Tensor, m: int) -> Tensor:
    """Indices of the ``m`` largest ``scores``, ascending; exact ties go to the lower index."""
    order = torch.sort(scores, descending=True, stable=True).indices[:m]
    return torch.sort(order).values


def dpc_centres(
    z: Tensor, m: int, k: int, noise: Tensor | None, delta: Literal["lower", "higher"] = "lower"
) -> tuple[Tensor, Tensor]:
    """(``[m]`` centre indices into ``z`` ascending, ``[n, n]`` float32 distances) of DPC-kNN.

    ``z`` ``[n, D]`` static tokens (``n >= 2``); ``noise`` ``[n]`` in ``[0, 1)`` or None.
    ``delta="lower"`` is the reference (Q1): distance to the nearest token of lower density;
    ``"higher"`` is textbook DPC (nearest token of higher density). A token with no such
    neighbour (the min over an all-``inf`` row) gets the global maximum distance.
    """
    n, d = z.shape
    zf = z.float()
    dist = torch.cdist(zf, zf).div_(math.sqrt(d))
    kn = min(k, n - 1)
    near = torch.topk(dist, kn, dim=-1, largest=False).values
    rho = torch.exp(-(near**2).mean(dim=-1))
    if noise is not None:
        rho = rho + noise.to(rho) * NOISE_SCALE
    if delta == "lower":
        blocked = ~(rho[:, None] > rho[None, :])
    else:
        blocked = ~(rho[None, :] > rho[:, None])
    nearest = dist.masked_fill(blocked, math.inf).min(dim=-1).values
    # nearest < inf exactly where some neighbour is allowed (an allowed inf distance: dist.max() is inf too)
    delta_i = torch.where(nearest < math.inf, nearest, dist.max())
    return top_positions(rho * delta_i, m), dist


def merge_members(z: Tensor, centres: Tensor, dist: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """(``[m, D]`` merged centre features, ``[n]`` long centre slot of every static token).

    Non-centres join the nearest centre by ``dist`` (first on ties); a centre's feature is
    ``beta * z[c] + (1 - beta) * mean(members)``, or ``z[c]`` unchanged when nothing joined it (Q7).
    The member sum runs in float32, each centre's members added in position order (the centres'
    own rows go to a spare row ``m`` of the ``[m + 1, D]`` sums); the blend in ``z``'s dtype, as
    the reference merges in the model's.
    """
    m = centres.numel()
    nearest = dist.index_select(1, centres).argmin(dim=-1)  # [n]; a centre's own entry is overwritten
    slot = nearest.index_copy_(0, centres, torch.arange(m, device=z.device))
    base = z.index_select(0, centres)
    if m == z.shape[0]:
        return base, slot
    into = slot.index_fill(0, centres, m)
    counts = torch.bincount(into, minlength=m + 1)[:m]
    sums = torch.zeros(m + 1, z.shape[1], dtype=torch.float32, device=z.device).index_add_(0, into, z.float())
    mean = (sums[:m] / counts.clamp(min=1)[:, None]).to(z.dtype)
    merged = beta * base + (1 - beta) * mean
    return torch.where((counts > 0)[:, None], merged, base), slot


def reduce_frame(
    x: Tensor,
    saliency: Tensor,
    static: Tensor,
    keep: int,
    k: int,
    beta: float,
    noise: Noise | None,
    delta: Literal["lower", "higher"] = "lower",
) -> FrameReduction:
    """One frame: ``x`` ``[N, D]``, ``saliency`` ``[N]`` (finite), ``static`` ``[N]`` bool → ``keep``
    rows (``keep <= N``).

    ``noise(n)`` is asked for the DPC noise only when DPC runs on more than one static token
    (as the reference draws it); None adds none. The kept positions are marked on an ``[N]`` mask
    (ascending by construction, no sort); dynamic picks are the stable descending sort of the
    saliency with the static positions set to ``-inf`` (``b_d <= n_dynamic``, so no static one is
    reached), which ranks the dynamic tokens as a sort of their own scores does.
    """
    n_tok = x.shape[0]
    dev = x.device
    static_pos = torch.nonzero(static).squeeze(1)
    n_s = static_pos.numel()
    b_s = keep * n_s // n_tok
    b_d = min(keep - b_s, n_tok - n_s)
    take = torch.zeros(n_tok, dtype=torch.bool, device=dev)
    centre_pos = merged = slot = None
    if b_s > 0 and n_s > 0:
        if n_s == 1:  # the reference's single-token branch: no DPC, no noise drawn
            centre_pos, slot = static_pos, torch.zeros_like(static_pos)
        else:
            z = x.index_select(0, static_pos)
            m = min(b_s, n_s)
            centres, dist = dpc_centres(z, m, k, noise(n_s) if noise is not None else None, delta)
            centre_pos = static_pos.index_select(0, centres)
            if m == n_s:  # every static token is a centre: nothing merges
                slot = torch.arange(m, device=dev)
            else:
                merged, slot = merge_members(z, centres, dist, beta)
        take.index_fill_(0, centre_pos, True)
    if b_d > 0:
        ranked = torch.sort(saliency.float().masked_fill(static, -math.inf), descending=True, stable=True)
        take.index_fill_(0, ranked.indices[:b_d], True)
    kept = torch.nonzero(take).squeeze(1)
    rank = take.cumsum(0).sub_(1)  # [N] output row of every kept position
    rows = x.index_select(0, kept)
    owner = torch.where(take, rank, -1)
    from_static = torch.zeros(n_tok, dtype=torch.bool, device=dev)
    if centre_pos is not None:
        centre_row = rank.index_select(0, centre_pos)
        owner.index_copy_(0, static_pos, centre_row.index_select(0, slot))
        from_static.index_fill_(0, centre_pos, True)
        if merged is not None:
            rows.index_copy_(0, centre_row, merged)
    return FrameReduction(kept, from_static.index_select(0, kept), rows, owner, n_s, b_s)
