"""Multi-bandwidth Gaussian similarity of unit rows to centres, per row or per frame."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as nnf
from torch import Tensor

from ...api.scoring_pruner import FrameLayout

__all__ = ["EPS", "frame_similarity", "frame_and_centre_similarity", "gaussian_similarity", "unit"]

EPS = 1e-12
"""As ``torch.nn.functional.normalize``, which both references use."""


def unit(x: Tensor, dim: int = -1) -> Tensor:
    """``x`` L2-normalised along ``dim`` (a zero vector stays zero)."""
    return nnf.normalize(x, dim=dim, eps=EPS)


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
"""Extra columns per row of the two-row buffers below, so their rows can never be merged into one."""
_SERIAL = 16384
"""Largest ``N`` for the two-row path: ATen runs an elementwise op of fewer than 32768 elements on
one thread, so each row is one inner loop, as each ``[N]`` call of the one-row path is."""


def frame_and_centre_similarity(
    xn: Tensor, centres: Tensor, layout: FrameLayout, centre: Tensor, alphas: Sequence[float]
) -> tuple[Tensor, Tensor]:
    """(:func:`frame_similarity` of ``xn`` ``[N, D']`` to ``centres`` ``[F, D']``, :func:`gaussian_similarity`
    of ``xn`` to ``centre`` ``[D']``), each ``[N]``, bit for bit, in half the operator calls.

    The two ``[N]`` squared distances are written as the rows of a ``[2, N]`` view of a ``[2, N+16]``
    buffer, and the bandwidth loop (a divide, an exponential and an add per bandwidth: most of a
    prune's operator calls, each a few microseconds of dispatch for a few hundred values) runs on
    both rows at once. The padding keeps the rows apart: ATen vectorises a row in blocks and
    finishes its last few values with scalar code, whose ``exp`` may round differently; one loop
    per row keeps exactly the split of the one-row calls, so every value is computed as before.
    Larger chunks (``N`` > 16384, where ATen would split a row between threads) take the one-row
    path.
    """
    n = xn.shape[0]
    if n > _SERIAL:
        return frame_similarity(xn, centres, layout, alphas), gaussian_similarity(xn, centre, alphas)

    # three [2, N] views of one buffer: squared distances, the running sum, one bandwidth's term
    neg_d2, out, term = torch.empty(3, 2, n + _PAD, dtype=xn.dtype, device=xn.device)[:, :, :n].unbind(0)
    d2_frames, d2_centre = neg_d2.unbind(0)
    if layout.per_frame is not None:
        x = xn.view(layout.num_frames, layout.per_frame, xn.shape[-1])
        diff = x - centres[:, None, :]
        torch.sum(diff.mul_(diff), -1, out=d2_frames.view(layout.num_frames, layout.per_frame))
    else:
        diff = xn - centres[layout.index]
        torch.sum(diff.mul_(diff), -1, out=d2_frames)
    diff = xn - centre
    torch.sum(diff.mul_(diff), -1, out=d2_centre)
    neg_d2.neg_()
    torch.div(neg_d2, 2 * alphas[0], out=out).exp_()
    for a in alphas[1:]:
        out += torch.div(neg_d2, 2 * a, out=term).exp_()
    frame, to_centre = out.unbind(0)
    return frame, to_centre
