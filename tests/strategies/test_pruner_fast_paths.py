"""The scoring pruners' low-dispatch paths give the plain paths' results exactly: the batched
bandwidth terms (any bandwidths, one or two threads, equal or ragged frames), ``take()``'s
``index_select`` gathers and assignment remap, the unchecked full-grid gather, the gathers that read
channel-major features in their own layout, the equal-frames layout shortcut and the fixed-budget
selection."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tokencompress.api.scoring_pruner import FrameLayout, PerFrameParams, ScoringPruner, select_per_frame
from tokencompress.api.tokens import VisualTokens
from tokencompress.api.types import ChunkInfo
from tokencompress.strategies.kernels import (
    frame_and_centre_similarity,
    frame_similarity,
    gather_columns,
    gaussian_similarity,
    unit,
)
from tokencompress.strategies.stc_pruner import StcPruner


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


@st.composite
def _carrier_in_either_layout(draw):
    """A carrier of random shape whose features are row-major or channel-major (LLaVA's pooling),
    with a subset of rows to keep, possibly after an earlier drop."""
    f, h, w, d = (
        draw(st.integers(1, 3)),
        draw(st.integers(1, 4)),
        draw(st.integers(1, 4)),
        draw(st.integers(1, 7)),
    )
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    x = torch.randn(f, h * w, d, generator=gen)
    vt = VisualTokens.from_frames(x, (h, w), first_frame=draw(st.integers(0, 9)))
    if draw(st.booleans()):
        vt = vt.with_tokens(vt.tokens.T.contiguous().T)  # [N, D] with strides (1, N)
    if draw(st.booleans()) and vt.count > 1:
        vt = vt.take(torch.arange(0, vt.count, 2))
    keep = draw(st.lists(st.booleans(), min_size=vt.count, max_size=vt.count))
    return vt, torch.tensor([i for i, k in enumerate(keep) if k], dtype=torch.long)


@settings(max_examples=80, deadline=None)
@given(_carrier_in_either_layout())
def test_take_ascending_equals_advanced_indexing_in_either_layout(data) -> None:
    """The unchecked gather (full-grid shortcut included) gives every field ``take`` must give, and
    keeps the features' layout."""
    vt, index = data
    out = vt.take_ascending(index)
    for name, want in _reference_take(vt, index).items():
        assert torch.equal(getattr(out, name), want), name
    if vt.tokens.stride() == (1, vt.count) and vt.count > 1 and index.numel() > 1:
        assert out.tokens.stride() == (1, index.numel())  # channel-major stays channel-major
    assert torch.equal(vt.take(index).tokens, out.tokens)


@pytest.mark.parametrize("n,d", [(196, 896), (5, 3), (2, 1)])
def test_gather_columns_gives_a_row_major_copy_in_either_layout(n, d) -> None:
    x = torch.randn(n, d)
    index = torch.randperm(d)[: max(1, d // 2)]
    for layout in (x, x.T.contiguous().T):
        got = gather_columns(layout, index)
        assert torch.equal(got, x[:, index]) and got.is_contiguous()


def test_the_lazy_full_grid_layout_reads_like_the_counted_one() -> None:
    vt = VisualTokens.from_frames(torch.randn(3, 4, 2), (2, 2), first_frame=7)
    lazy = FrameLayout.of(vt)
    counted = FrameLayout(vt.frame - vt.first_frame, torch.bincount(vt.frame - 7), 4)
    assert (lazy.num_frames, lazy.per_frame, lazy.device) == (3, 4, vt.frame.device)
    assert torch.equal(lazy.index, counted.index) and torch.equal(lazy.counts, counted.counts)
    assert repr(lazy) == "FrameLayout(num_frames=3, per_frame=4)"


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 3), st.integers(1, 12), st.integers(0, 2**16))
def test_stc_pruner_does_not_depend_on_the_feature_layout(frames, k, seed) -> None:
    """Channel-major features (LLaVA-OneVision) are scored exactly as a row-major copy: same rows,
    same similarities, same memory, chunk after chunk."""
    gen = torch.Generator().manual_seed(seed)
    chunks = [torch.randn(frames, 16, 24, generator=gen) for _ in range(3)]
    runs = []
    for make in (lambda x: x, lambda x: x.reshape(-1, 24).T.contiguous().T.reshape(x.shape)):
        pruner = StcPruner(tokens_per_frame=k)
        state, out = pruner.new_state(), []
        for c, x in enumerate(chunks):
            vt = VisualTokens.from_frames(make(x), (4, 4), first_frame=c * frames)
            kept = pruner.apply(vt, state, ChunkInfo(c, c * frames, frames))
            out.append((kept.source, kept.tokens, state.last.similarities, state.total))
        runs.append(out)
    for a, b in zip(*runs, strict=True):
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y)


@pytest.mark.parametrize("k", [1, 4, 9])
def test_fixed_budgets_on_a_full_grid_equal_the_clamped_counts(k) -> None:
    """The stock budgets of a full-grid layout come without reading ``counts`` and equal ``min(k, T_f)``."""
    vt = VisualTokens.from_frames(torch.randn(3, 6, 2), (2, 3))
    pruner = _Norm(tokens_per_frame=k)
    lay = FrameLayout.of(vt)
    budgets = pruner.frame_budgets(lay)
    assert lay._counts is None  # counts were never materialised
    assert torch.equal(budgets, torch.clamp(lay.counts, max=k))


def test_stc_pruner_plans_without_autograd_whatever_the_grad_mode() -> None:
    """With autograd on, the plan still builds no graph (it enters ``no_grad`` itself); with it off
    (streams), the same scores come out."""
    x = torch.randn(1, 16, 8, requires_grad=True)
    vt = VisualTokens.from_frames(x, (4, 4))
    pruner = StcPruner(tokens_per_frame=3)
    with torch.enable_grad():
        on = pruner.plan(vt, pruner.new_state(), ChunkInfo(0, 0, 1))
    with torch.no_grad():
        off = pruner.plan(vt, pruner.new_state(), ChunkInfo(0, 0, 1))
    assert not on.scores.requires_grad and on.scores.grad_fn is None
    assert torch.equal(on.scores, off.scores)
