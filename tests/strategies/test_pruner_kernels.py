"""The pruners' shared similarity kernels: the two-row bandwidth loop gives the one-row values bit
for bit (equal, ragged and large chunks), so the STC-Pruner fixtures hold whichever path runs."""

from __future__ import annotations

import pytest
import torch

from tokencompress.api.scoring_pruner import FrameLayout
from tokencompress.strategies.kernels import (
    frame_and_centre_similarity,
    frame_similarity,
    gaussian_similarity,
    unit,
)

ALPHAS = (0.125, 0.25, 0.5, 1.0, 2.0)


def layout(counts: list[int]) -> FrameLayout:
    index = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    return FrameLayout(index, torch.tensor(counts), counts[0] if len(set(counts)) == 1 else None)


@pytest.mark.parametrize(
    "counts",
    [[196], [196] * 4, [60, 196, 7], [1], [33] * 3, [196] * 41, [196] * 90],  # the last: one-row path
)
@pytest.mark.parametrize("width", [448, 5])
def test_two_rows_at_once_equal_one_row_each_bit_for_bit(counts, width) -> None:
    gen = torch.Generator().manual_seed(sum(counts) + width)
    lay = layout(counts)
    xn = unit(torch.randn(sum(counts), width, generator=gen) * 3)
    centres = lay.mean(xn)
    centre = unit(torch.randn(width, generator=gen), dim=0)
    frame, memory = frame_and_centre_similarity(xn, centres, lay, centre, ALPHAS)
    assert torch.equal(frame, frame_similarity(xn, centres, lay, ALPHAS))
    assert torch.equal(memory, gaussian_similarity(xn, centre, ALPHAS))
    assert frame.shape == memory.shape == (sum(counts),)
