"""Multi-bandwidth Gaussian similarity of unit rows to centres, per row or per frame."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ...api.scoring_pruner import FrameLayout

__all__ = [
    "EPS",
    "bandwidth_divisors",
    "frame_similarity",
    "frame_and_centre_similarity",
    "gaussian_similarity",
    "unit",
]

EPS = 1e-12
"""As ``torch.nn.functional.normalize``, which both references use."""


def unit(x: Tensor, dim: int = -1) -> Tensor:
    """``x`` L2-normalised along ``dim`` (a zero vector stays zero).

    The arithmetic of ``torch.nn.functional.normalize`` (the same norm kernel, the norm clamped to
    ``EPS``, one division), minus its Python layers and the explicit expand, which dispatch costs
    more than the division of a few hundred rows.
    """
    return x / torch.linalg.vector_norm(x, 2.0, dim, keepdim=True).clamp_min_(EPS)


def gaussian_similarity(x: Tensor, centre: Tensor, alphas: Sequence[float]) -> Tensor:
    """``sum_a exp(-|x - c|^2 / (2a))`` ``[...]`` between rows ``x`` ``[..., D']`` and broadcastable centres.

    The bandwidths are added one at a time in the given order, as the VidCom² reference does: its
    sharp softmax over frame means amplifies any other rounding past the fixtures' tolerance, and
    a fixed order is also the same on every CPU (a vectorised sum over the bandwidths is not).
    """
    diff = x - centre
    neg_d2 = diff.mul_(diff).sum(-1).neg_()  # in place: fewer buffers per call, the same values
    out = torch.div(neg_d2, 2 * alphas[0]).exp_()
    for a in alphas[1:]:
        out += torch.div(neg_d2, 2 * a).exp_()
    return out


def frame_similarity(xn: Tensor, centres: Tensor, layout: FrameLayout, alphas: Sequence[float]) -> Tensor:
    """``[N]`` similarity of every row of ``xn`` ``[N, D']`` to its own frame's centre (``centres`` ``[F, D']``).

    Equal frames broadcast the centres over a ``[F, T, D']`` view; ragged ones gather a centre per row.
    Both give the same value for a row.
    """
    if layout.per_frame is not None:
        x = xn.view(layout.num_frames, layout.per_frame, xn.shape[-1])
        return gaussian_similarity(x, centres[:, None, :], alphas).reshape(-1)
    return gaussian_similarity(xn, centres[layout.index], alphas)


_PAD = 16
"""Extra columns per row of the row buffers below, so their rows can never be merged into one."""
_SERIAL = 16384
"""Largest ``N`` for the batched path: ATen runs an elementwise op of fewer than 32768 elements on
one thread, so each row is one inner loop, as each ``[N]`` call of the one-row path is."""


def bandwidth_divisors(alphas: Sequence[float], like: Tensor | None = None) -> Tensor:
    """``[A, 1, 1]`` the divisors ``-2a`` of every bandwidth, float32 on CPU or as ``like``: built once
    by a pruner and passed to :func:`frame_and_centre_similarity`, since building a tensor from Python
    floats costs more than the division it feeds."""
    dtype, device = (torch.float32, None) if like is None else (like.dtype, like.device)
    return torch.tensor([[[-2.0 * a]] for a in alphas], dtype=dtype, device=device)


def frame_and_centre_similarity(
    xn: Tensor,
    centres: Tensor,
    layout: FrameLayout,
    centre: Tensor,
    alphas: Sequence[float],
    divisors: Tensor | None = None,
) -> Tensor:
    """``[2, N]``: row 0 :func:`frame_similarity` of ``xn`` ``[N, D']`` to ``centres`` ``[F, D']``, row 1
    :func:`gaussian_similarity` of ``xn`` to ``centre`` ``[D']``, bit for bit, in a handful of operator calls
    (one block, not two tensors: splitting it is an operator call of its own).

    A prune is a few hundred values per call, so dispatch, not arithmetic, is its cost (and right
    after a prefill or a tower has evicted the caches, every distinct call costs several times its
    warm time). Both differences come from one subtraction against a ``[2, ..., D']`` stack of the
    anchors, both squared distances land as the two rows of a ``[2, N]`` block, and every
    bandwidth's term is one row of a single ``[A, 2, N]`` divide and exponential (dividing by
    ``-2a`` is exactly negating and dividing by ``2a``). The terms are then added one bandwidth at
    a time, in the loop's order: ``torch.sum`` over the bandwidths would be one call, but it
    reorders the additions. The exponential's rows are padded by 16 columns so it cannot run two
    rows as one inner loop: its vector and scalar (tail) paths round differently, and each row
    must split as a one-row call does. Chunks over 16384 rows (where ATen would split a row
    between threads) take the one-row path. ``divisors``: :func:`bandwidth_divisors` of ``alphas``
    (built here when missing or of another dtype or device).
    """
    n, a = xn.shape[0], len(alphas)
    if n > _SERIAL or a < 2:
        return torch.stack(
            (frame_similarity(xn, centres, layout, alphas), gaussian_similarity(xn, centre, alphas))
        )
    if layout.per_frame is not None:
        anchors = torch.stack((centres, centre.expand_as(centres)))[:, :, None]  # [2, F, 1, D']
        diff = xn.view(layout.num_frames, layout.per_frame, xn.shape[-1]) - anchors  # [2, F, T, D']
    else:
        diff = xn - torch.stack((centres[layout.index], centre.expand_as(xn)))  # [2, N, D']
    d2 = diff.mul_(diff).sum(-1).view(2, n)  # [2, N] squared distances, row by row as a [N] call
    if divisors is None or divisors.dtype != xn.dtype or divisors.device != xn.device:
        divisors = bandwidth_divisors(alphas, xn)
    buf = torch.empty(a, 2, n + _PAD, dtype=xn.dtype, device=xn.device)
    first, second, *rest = torch.div(d2, divisors, out=buf[:, :, :n]).exp_().unbind(0)  # A x [2, N]
    out = first + second
    for term in rest:
        out += term
    return out
