"""``torch.nn.functional.cosine_similarity`` split in two halves, so every frame is normalised once.

torch computes ``cos(a, b)`` over the last dim as ``sum(a / max(|a|, eps) * (b / max(|b|, eps)))``:
two norms, two divisions, a product and a sum over the feature width. The per-frame drops (EVS,
DTD) compare frame ``t`` with frame ``t - 1`` for every frame of a chunk, and the chunk's last
frame again with the next chunk's first, so with the function itself each frame is normalised
twice. :func:`cosine_units` (the first half) runs once per frame ``[F, n, D] -> [F, n, D]`` and
:func:`unit_cosine` (the second half) pairs any two of them; the result is bit-identical to
``F.cosine_similarity`` (same operations on the same values, row by row), so ties and the
threshold comparisons of the references come out exactly as before.

Layout: the rows are made contiguous first. torch's norm sums a row in a different order when the
row is strided (a target's pooled grid can come transposed, ``[N, D]`` with strides ``(1, N)``),
so the last bit of a cosine would depend on how a target laid its features out, and that
strided reduction is also many times slower. Contiguous rows are what the golden fixtures feed,
so every target now gets the fixtures' rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["COSINE_EPS", "cosine_units", "unit_cosine"]

COSINE_EPS = 1e-8
"""``torch.nn.functional.cosine_similarity``'s default ``eps`` (the norm's lower clamp)."""


def cosine_units(x: Tensor, eps: float = COSINE_EPS) -> Tensor:
    """``x / max(|x|, eps)`` over the last dim (a zero row stays zero), as cosine_similarity divides;
    contiguous rows (see the module note)."""
    x = x.contiguous()
    norm = torch.linalg.vector_norm(x, 2, dim=-1, keepdim=True).clamp_min_(eps)
    return x / norm


def unit_cosine(a: Tensor, b: Tensor) -> Tensor:
    """``[...]`` cosine of rows already passed through :func:`cosine_units` (equal shapes ``[..., D]``)."""
    return (a * b).sum(dim=-1)
