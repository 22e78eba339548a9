"""Hypothesis strategies shared by the streaming-strategy tests."""

from __future__ import annotations

from hypothesis import strategies as st

from tokencompress.api.tokens import VisualTokens
from tokencompress.testing import visual_tokens


@st.composite
def streams(draw: st.DrawFn, chunks: int = 3) -> list[VisualTokens]:
    """Consecutive chunks of one stream: same grid, width and frames per chunk."""
    f, h, w, d = (
        draw(st.integers(1, 3)),
        draw(st.integers(1, 5)),
        draw(st.integers(1, 5)),
        draw(st.integers(1, 12)),
    )
    return [draw(visual_tokens(frames=f, grid=(h, w), dim=d, first_frame=c * f)) for c in range(chunks)]
