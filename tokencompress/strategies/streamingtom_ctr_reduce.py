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

__all__ = ["FrameReduction", "static_masks", "dpc_centres", "merge_members", "reduce_frame", "top_positions"]

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


def static_masks(x: Tensor, prev: Tensor | None, threshold: float) -> Tensor:
    """``[T, N]`` bool: cosine of ``x[t, i]`` to the previous raw frame's token ``i`` > ``threshold``.

    ``x`` ``[T, N, D]``; ``prev`` ``[N, D]`` is the last raw frame before ``x[0]`` (None at the
    start of a stream: frame 0 is then all dynamic). Rows are made contiguous before the norm: a
    strided row (a target's transposed pooled grid) is summed in another order, so the last bit of
    a cosine would follow the target's memory layout, and that reduction is many times slower.
    """
    xn = F.normalize(x.float().contiguous(), dim=-1, eps=1e-12)
    if prev is None:
        ref = xn[:-1]
        head = torch.zeros(1, x.shape[1], dtype=torch.bool, device=x.device)
    else:
        ref = torch.cat([F.normalize(prev.float().contiguous(), dim=-1, eps=1e-12)[None], xn[:-1]])
        head = None
    cos = (xn[0 if head is None else 1 :] * ref).sum(dim=-1)
    mask = cos > threshold
    return mask if head is None else torch.cat([head, mask])


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
    ``"higher"`` is textbook DPC (nearest token of higher density).
    """
    n, d = z.shape
    zf = z.float()
    dist = torch.cdist(zf, zf) / math.sqrt(d)
    kn = min(k, n - 1)
    near = torch.topk(dist, kn, dim=-1, largest=False).values
    rho = torch.exp(-(near**2).mean(dim=-1))
    if noise is not None:
        rho = rho + noise.to(rho) * NOISE_SCALE
    if delta == "lower":
        allowed = rho[:, None] > rho[None, :]
    else:
        allowed = rho[None, :] > rho[:, None]
    nearest = dist.masked_fill(~allowed, math.inf).min(dim=-1).values
    delta_i = torch.where(allowed.any(dim=-1), nearest, dist.max())
    return top_positions(rho * delta_i, m), dist


def merge_members(z: Tensor, centres: Tensor, dist: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """(``[m, D]`` merged centre features, ``[n]`` long centre slot of every static token).

    Non-centres join the nearest centre by ``dist`` (first on ties); a centre's feature is
    ``beta * z[c] + (1 - beta) * mean(members)``, or ``z[c]`` unchanged when nothing joined it (Q7).
    The member sum runs in float32; the blend in ``z``'s dtype, as the reference merges in the model's.
    """
    n, m = z.shape[0], centres.numel()
    slot = torch.full((n,), -1, dtype=torch.long, device=z.device)
    slot[centres] = torch.arange(m, device=z.device)
    others = torch.nonzero(slot < 0).squeeze(1)
    if others.numel() == 0:
        return z[centres], slot
    joined = dist[others][:, centres].argmin(dim=-1)
    slot[others] = joined
    counts = torch.bincount(joined, minlength=m)
    sums = torch.zeros(m, z.shape[1], dtype=torch.float32, device=z.device).index_add_(
        0, joined, z[others].float()
    )
    mean = (sums / counts.clamp(min=1)[:, None]).to(z.dtype)
    base = z[centres]
    merged = beta * base + (1 - beta) * mean
    return torch.where((counts > 0)[:, None], merged, base), slot


@dataclass(frozen=True)
class _Part:
    """Rows from one path: ``positions`` ``[r]`` of the rows, their ``rows`` ``[r, D]``, and which grid
    positions (``members``) live in which of these rows (``slot``)."""

    positions: Tensor
    rows: Tensor
    members: Tensor
    slot: Tensor
    static: bool


def _static_part(x: Tensor, static_pos: Tensor, b_s: int, k: int, beta: float, noise, delta) -> _Part:
    z = x[static_pos]
    n_s = static_pos.numel()
    if n_s <= 1:  # the reference's single-token branch: no DPC, no noise drawn
        return _Part(static_pos, z, static_pos, torch.zeros_like(static_pos), True)
    m = min(b_s, n_s)
    centres, dist = dpc_centres(z, m, k, noise(n_s) if noise is not None else None, delta)
    if m == n_s:  # every static token is a centre: nothing merges
        return _Part(
            static_pos[centres], z[centres], static_pos[centres], torch.arange(m, device=x.device), True
        )
    rows, slot = merge_members(z, centres, dist, beta)
    return _Part(static_pos[centres], rows, static_pos, slot, True)


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
    """One frame: ``x`` ``[N, D]``, ``saliency`` ``[N]``, ``static`` ``[N]`` bool → ``keep`` rows.

    ``noise(n)`` is asked for the DPC noise only when DPC runs on more than one static token
    (as the reference draws it); None adds none.
    """
    n_tok = x.shape[0]
    dev = x.device
    static_pos = torch.nonzero(static).squeeze(1)
    dynamic_pos = torch.nonzero(~static).squeeze(1)
    n_s = static_pos.numel()
    b_s = keep * n_s // n_tok
    b_d = keep - b_s
    parts: list[_Part] = []
    if b_s > 0 and n_s > 0:
        parts.append(_static_part(x, static_pos, b_s, k, beta, noise, delta))
    if b_d > 0 and dynamic_pos.numel() > 0:
        picked = dynamic_pos[top_positions(saliency[dynamic_pos].float(), min(b_d, dynamic_pos.numel()))]
        parts.append(_Part(picked, x[picked], picked, torch.arange(picked.numel(), device=dev), False))
    owner = torch.full((n_tok,), -1, dtype=torch.long, device=dev)
    if not parts:
        empty = torch.zeros(0, dtype=torch.long, device=dev)
        return FrameReduction(empty, empty.bool(), x[:0], owner, n_s, b_s)
    positions = torch.cat([p.positions for p in parts])
    order = torch.argsort(positions)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=dev)
    offset = 0
    for part in parts:
        owner[part.members] = rank[offset + part.slot]
        offset += part.positions.numel()
    flags = torch.cat(
        [torch.full((p.positions.numel(),), p.static, dtype=torch.bool, device=dev) for p in parts]
    )
    rows = torch.cat([p.rows for p in parts])
    return FrameReduction(positions[order], flags[order], rows[order], owner, n_s, b_s)
