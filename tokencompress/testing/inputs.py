"""Hypothesis inputs for strategy tests: token chunks with the ties and scales where bugs hide."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from ..api.tokens import VisualTokens

__all__ = ["visual_tokens"]

_IntLike = int | st.SearchStrategy[int]
_FRAMES = st.integers(1, 3)
_GRID = st.tuples(st.integers(1, 6), st.integers(1, 6))
_DIM = st.integers(1, 16)


def _draw_int(draw: st.DrawFn, value: _IntLike) -> int:
    return value if isinstance(value, int) else draw(value)


@st.composite
def visual_tokens(
    draw: st.DrawFn,
    frames: _IntLike = _FRAMES,
    grid: tuple[int, int] | st.SearchStrategy[tuple[int, int]] = _GRID,
    dim: _IntLike = _DIM,
    first_frame: _IntLike = 0,
) -> VisualTokens:
    """A float32 :class:`VisualTokens` chunk built with ``from_frames`` (``[F*H*W, D]`` rows).

    Each argument is a fixed value or a hypothesis strategy. Values come from a seeded
    generator (drawing thousands of floats one by one is slow and shrinks badly); the scale
    varies over orders of magnitude, values are sometimes rounded to a coarse grid, and rows
    are sometimes copied onto others (within and across frames), because exact ties are where
    top-k and tie-break bugs hide.
    """
    f = _draw_int(draw, frames)
    h, w = grid if isinstance(grid, tuple) else draw(grid)
    d = _draw_int(draw, dim)
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    x = torch.randn(f * h * w, d, generator=gen) * draw(st.sampled_from([1e-3, 1.0, 1e3]))
    if draw(st.booleans()):
        x = torch.round(x * 2) / 2
    if draw(st.booleans()):
        n = x.shape[0]
        copies = draw(st.integers(1, max(1, n // 2)))
        dst = torch.randint(n, (copies,), generator=gen)
        src = torch.randint(n, (copies,), generator=gen)
        x[dst] = x[src]
    return VisualTokens.from_frames(x.reshape(f, h * w, d), (h, w), first_frame=_draw_int(draw, first_frame))
