"""The scoring pruners' low-dispatch paths give the plain paths' results exactly: the batched
bandwidth terms (any bandwidths, one or two threads, equal or ragged frames), ``take()``'s
``index_select`` gathers and assignment remap, the equal-frames layout shortcut and the fixed-budget
selection."""

from __future__ import annotations

import pytest
import torch

from tokencompress.api.scoring_pruner import FrameLayout, PerFrameParams, ScoringPruner, select_per_frame
from tokencompress.api.tokens import VisualTokens
from tokencompress.strategies.kernels import (
    frame_and_centre_similarity,
    frame_similarity,
    gaussian_similarity,
    unit,
)


def _layout(counts: list[int]) -> FrameLayout:
    index = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    return FrameLayout(index, torch.tensor(counts), counts[0] if len(set(counts)) == 1 else None)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    "alphas", [(0.1, 0.3, 0.7), (0.125, 0.25, 0.5, 1.0, 2.0), (1.0,), tuple(0.05 * i for i in range(1, 20))]
)
@pytest.mark.parametrize("counts", [[196], [196] * 4, [60, 196, 7], [729] * 2])
def test_batched_bandwidths_equal_the_loop_bit_for_bit(threads, alphas, counts) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(len(alphas) + sum(counts))
        lay = _layout(counts)
        xn = unit(torch.randn(sum(counts), 448, generator=gen) * 3)
        centres = lay.mean(xn)
        centre = unit(torch.randn(448, generator=gen), dim=0)
        frame, memory = frame_and_centre_similarity(xn, centres, lay, centre, alphas)
        assert torch.equal(frame, frame_similarity(xn, centres, lay, alphas))
        assert torch.equal(memory, gaussian_similarity(xn, centre, alphas))
    finally:
        torch.set_num_threads(before)


def test_unit_equals_functional_normalize() -> None:
    x = torch.randn(50, 33) * 7
    x[3] = 0
    assert torch.equal(unit(x), torch.nn.functional.normalize(x, dim=-1, eps=1e-12))
    assert torch.equal(unit(x[:, 0], dim=0), torch.nn.functional.normalize(x[:, 0], dim=0, eps=1e-12))


def _reference_take(vt: VisualTokens, index: torch.Tensor) -> dict[str, torch.Tensor]:
    """The fields ``take`` must give, by advanced indexing and an explicit remap."""
    remap = torch.full((vt.count,), -1, dtype=torch.long)
    remap[index] = torch.arange(index.numel())
    alive = vt.assign >= 0
    assign = torch.where(alive, remap[vt.assign.clamp(min=0)], vt.assign)
    return {
        "tokens": vt.tokens[index],
        "frame": vt.frame[index],
        "pos": vt.pos[index],
        "source": vt.source[index],
        "sizes": vt.sizes[index],
        "assign": assign,
    }


@pytest.mark.parametrize("seed", range(8))
def test_take_equals_advanced_indexing_after_drops_and_merges(seed) -> None:
    gen = torch.Generator().manual_seed(seed)
    vt = VisualTokens.from_frames(torch.randn(3, 12, 5, generator=gen), (3, 4), first_frame=seed)
    vt = vt.take(torch.sort(torch.randperm(36, generator=gen)[:30]).values)  # some originals dropped
    group = torch.arange(vt.count)
    group[1] = 0  # rows 0 and 1 share a frame: one merged row
    vt = vt.merge(group)
    index = torch.sort(torch.randperm(vt.count, generator=gen)[: vt.count // 2]).values
    out = vt.take(index)
    for name, want in _reference_take(vt, index).items():
        assert torch.equal(getattr(out, name), want), name


def test_take_counts_a_negative_index_from_the_end_and_keeps_its_errors() -> None:
    vt = VisualTokens.from_frames(torch.randn(2, 4, 3), (2, 2))
    assert torch.equal(vt.take(torch.tensor([-3, -1])).source, torch.tensor([5, 7]))
    assert torch.equal(vt.take(torch.tensor([], dtype=torch.long)).assign, torch.full((8,), -1))
    with pytest.raises(ValueError, match="strictly increasing"):
        vt.take(torch.tensor([2, 2]))
    with pytest.raises(IndexError):
        vt.take(torch.tensor([3, 8]))


def test_full_grid_layout_equals_the_counted_layout() -> None:
    vt = VisualTokens.from_frames(torch.randn(3, 6, 2), (2, 3), first_frame=5)
    lay = FrameLayout.of(vt)
    assert lay.per_frame == 6 and torch.equal(lay.counts, torch.full((3,), 6))
    assert torch.equal(lay.index, torch.tensor([0] * 6 + [1] * 6 + [2] * 6))
    ragged = FrameLayout.of(vt.take(torch.tensor([0, 1, 6, 7, 8, 12])))
    assert ragged.per_frame is None and ragged.counts.tolist() == [2, 3, 1]


class _Norm(ScoringPruner):
    name = "norm_fast_path_probe"
    Params = PerFrameParams

    def score(self, tokens, state, chunk):
        return tokens.tokens.norm(dim=-1)


class _Halving(_Norm):
    def frame_budgets(self, layout):
        return layout.counts // 2


@pytest.mark.parametrize("k", [1, 3, 6, 9])
def test_the_fixed_budget_selection_equals_select_per_frame(k) -> None:
    vt = VisualTokens.from_frames(torch.randn(4, 6, 3), (2, 3))
    for pruner in (_Norm(tokens_per_frame=k), _Halving(tokens_per_frame=k)):
        plan = pruner.plan(vt, None, None)
        assert plan.per_frame_budget == (None if isinstance(pruner, _Halving) else k)
        want = select_per_frame(plan.scores, vt.frame, plan.budgets)
        assert torch.equal(plan.select(), want)
        assert plan.keeps_all() == bool((plan.budgets >= plan.layout.counts).all())
        assert torch.equal(pruner.apply(vt, None, None).source, vt.source[want])


def test_non_finite_scores_are_still_refused() -> None:
    scores = torch.tensor([1.0, float("nan"), float("inf"), 2.0])
    with pytest.raises(ValueError, match="1 NaN and 1 infinite of 4"):
        select_per_frame(scores, torch.zeros(4, dtype=torch.long), torch.tensor([2]))
    big = torch.full((4,), 3e38)  # finite scores whose sum overflows are fine
    assert select_per_frame(big, torch.zeros(4, dtype=torch.long), torch.tensor([2])).tolist() == [0, 1]
