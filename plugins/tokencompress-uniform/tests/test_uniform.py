from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from tokencompress_uniform import UniformGrid, keep_rank, lattice_shape

from tokencompress import Pipeline, Registry, Stage, VisualTokens
from tokencompress.testing import check_token_strategy, visual_tokens

PIPELINE = Path(__file__).resolve().parents[1] / "pipelines" / "uniform.yaml"


def _grid_positions(rows: int, cols: int) -> torch.Tensor:
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    return torch.stack((r, c), -1).reshape(-1, 2)


def _kept(rows: int, cols: int, k: int) -> set[tuple[int, int]]:
    tokens = VisualTokens.from_frames(torch.randn(1, rows * cols, 4), (rows, cols))
    out = UniformGrid(tokens_per_frame=k).apply(tokens, None, None)  # type: ignore[arg-type]
    return {tuple(p) for p in out.pos.tolist()}


def test_registered_through_its_entry_point() -> None:
    reg = Registry().strategies["uniform_grid"]
    assert (reg.cls, reg.package, reg.version) == (UniformGrid, "tokencompress-uniform", "0.1.0")


@settings(max_examples=40, deadline=None)
@given(tokens=visual_tokens(), k=st.integers(1, 40), chunks=st.integers(1, 3))
def test_conformance(tokens: VisualTokens, k: int, chunks: int) -> None:
    check_token_strategy(UniformGrid(tokens_per_frame=k), tokens, chunks=chunks)


@settings(max_examples=25, deadline=None)
@given(tokens=visual_tokens(frames=2), data=st.data())
def test_conformance_after_an_earlier_pruner(tokens: VisualTokens, data: st.DataObject) -> None:
    # Ragged frames with holes in the grid: what uniform_grid sees behind another pre_prefill pruner.
    # (at least one row survives: the core cannot carry an entirely empty chunk yet)
    keep = data.draw(st.lists(st.booleans(), min_size=tokens.count, max_size=tokens.count))
    index = torch.tensor([i for i, k in enumerate(keep) if k] or [0], dtype=torch.long)
    pruned = tokens.take(index)
    check_token_strategy(UniformGrid(tokens_per_frame=data.draw(st.integers(1, 20))), [pruned])


def test_factoring_budgets_are_exact_centred_lattices() -> None:
    assert _kept(14, 14, 4) == {(3, 3), (3, 10), (10, 3), (10, 10)}
    assert _kept(14, 14, 49) == {(r, c) for r in range(1, 14, 2) for c in range(1, 14, 2)}
    assert _kept(14, 14, 1) == {(7, 7)}


def test_llava_budget_uses_a_square_lattice() -> None:
    assert lattice_shape(14, 14, 60) == (7, 8)
    kept = _kept(14, 14, 60)
    assert len(kept) == 60
    assert {(r, c) for r in range(1, 14, 2) for c in (0, 2, 4, 6, 7, 9, 11, 13)} <= kept


@pytest.mark.parametrize("grid", [(14, 14), (27, 27), (3, 5), (10, 20), (1, 7)])
def test_every_budget_covers_the_whole_frame(grid: tuple[int, int]) -> None:
    rows, cols = grid
    pos = _grid_positions(rows, cols).double()
    n = rows * cols
    budgets = range(1, n + 1) if n <= 64 else sorted({*range(1, 64), *range(64, n, 7), n})
    for k in budgets:
        rank = keep_rank(rows, cols, k)
        assert sorted(rank.tolist()) == list(range(n))  # a total order: no ties
        a, b = lattice_shape(rows, cols, k)
        assert a * b <= k
        # no cell is farther from a kept token than half a lattice cell's diagonal, plus rounding
        reach = torch.cdist(pos, pos[rank < k]).min(1).values.max().item()
        assert reach <= math.hypot(rows / a, cols / b) / 2 + 0.75, (k, reach)


def test_content_blind() -> None:
    a = VisualTokens.from_frames(torch.randn(2, 196, 8), (14, 14))
    b = VisualTokens.from_frames(torch.randn(2, 196, 8) * 1e3, (14, 14))
    strategy = UniformGrid(tokens_per_frame=60)
    assert torch.equal(strategy.apply(a, None, None).source, strategy.apply(b, None, None).source)  # type: ignore[arg-type]


def test_params() -> None:
    assert UniformGrid().params.tokens_per_frame == 60
    with pytest.raises(ValidationError):
        UniformGrid(tokens_per_frame=0)
    with pytest.raises(ValidationError):
        UniformGrid(tokens_per_frame=4, stride=2)
    assert UniformGrid.stage is Stage.PRE_PREFILL
    assert UniformGrid(tokens_per_frame=60).planned_count(196, 3) == 180


def test_example_pipeline_streams_on_llava_onevision_geometry() -> None:
    from transformers import LlavaOnevisionForConditionalGeneration

    from tokencompress.models.loading import default_model_config

    torch.manual_seed(0)
    config = default_model_config(vocab_size=300, image_token_id=298, video_token_id=299)  # 384 px
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    pipeline = Pipeline.from_yaml(PIPELINE)
    with pipeline.apply(model) as bound:
        stats = bound.stream().add_frames(
            np.random.default_rng(0).integers(0, 256, (2, 48, 64, 3), dtype=np.uint8)
        )
    assert [(s.vit_tokens, s.pre_prefill) for s in stats] == [(729, (196, 60)), (729, (196, 60))]
