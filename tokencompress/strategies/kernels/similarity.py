"""Multi-bandwidth Gaussian similarity of unit rows to centres, per row or per frame."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ...api.scoring_pruner import FrameLayout

__all__ = ["EPS", "frame_similarity", "frame_and_centre_similarity", "gaussian_similarity", "unit"]

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


def frame_and_centre_similarity(
    xn: Tensor, centres: Tensor, layout: FrameLayout, centre: Tensor, alphas: Sequence[float]
) -> tuple[Tensor, Tensor]:
    """(:func:`frame_similarity` of ``xn`` ``[N, D']`` to ``centres`` ``[F, D']``, :func:`gaussian_similarity`
    of ``xn`` to ``centre`` ``[D']``), each ``[N]``, bit for bit, in a handful of operator calls.

    A prune is a few hundred values per call, so dispatch, not arithmetic, is its cost. Both
    differences come from one subtraction against a ``[2, ..., D']`` stack of the anchors, both
    squared distances land as the two rows of a ``[2, N]`` view, and every bandwidth's term is one
    row of a single ``[A, 2, N]`` divide and exponential (dividing by ``-2a`` is exactly negating
    and dividing by ``2a``). The terms are then added one bandwidth at a time, in the loop's
    order: ``torch.sum`` over the bandwidths would be one call, but it reorders the additions of
    the columns past its last full group of vectors (which ones depends on the ISA's vector
    width). Rows are padded by 16 columns so no op can merge two rows into one inner loop: each
    row is vectorised and finished exactly as a one-row call is. Chunks over 16384 rows (where
    ATen would split a row between threads) take the one-row path.
    """
    n, a = xn.shape[0], len(alphas)
    if n > _SERIAL or a < 2:
        return frame_similarity(xn, centres, layout, alphas), gaussian_similarity(xn, centre, alphas)

    # rows 0..A-1: one bandwidth's term each; row A: squared distances; row A+1: their sum
    buf = torch.empty(a + 2, 2, n + _PAD, dtype=xn.dtype, device=xn.device)[:, :, :n]
    terms, d2, out = buf[:a], buf[a], buf[a + 1]
    if layout.per_frame is not None:
        f, t = layout.num_frames, layout.per_frame
        anchors = torch.stack((centres, centre.expand_as(centres)))  # [2, F, D']
        diff = xn.view(f, t, xn.shape[-1]) - anchors[:, :, None, :]  # [2, F, T, D']
        torch.sum(diff.mul_(diff), -1, out=d2.view(2, f, t))
    else:
        anchors = torch.stack((centres[layout.index], centre.expand_as(xn)))  # [2, N, D']
        diff = xn - anchors
        torch.sum(diff.mul_(diff), -1, out=d2)
    scale = torch.tensor([-2.0 * x for x in alphas], dtype=xn.dtype, device=xn.device)
    first, second, *rest = torch.div(d2, scale[:, None, None], out=terms).exp_().unbind(0)
    torch.add(first, second, out=out)
    for term in rest:
        out += term
    frame, to_centre = out.unbind(0)
    return frame, to_centre
