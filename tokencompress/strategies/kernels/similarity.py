"""Multi-bandwidth Gaussian similarity of unit rows to centres, per row or per frame."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as nnf
from torch import Tensor

from ...api.scoring_pruner import FrameLayout

__all__ = ["EPS", "frame_similarity", "gaussian_similarity", "unit"]

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
