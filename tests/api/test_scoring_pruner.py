"""The scoring-pruner protocol (plan, select, commit) and the similarity kernels the pruners share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokencompress import ChunkInfo, PerFrameParams, Plan, ScoringPruner, Stage, StrategyParams, VisualTokens
from tokencompress.api.scoring_pruner import FrameLayout, select_per_frame
from tokencompress.strategies.kernels import ChunkMeans, channel_variance, gaussian_similarity
from tokencompress.strategies.stc_pruner import StcPruner
from tokencompress.testing import check_token_strategy, visual_tokens

PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _by_sorting(scores: torch.Tensor, counts: list[int], budgets: list[int]) -> list[int]:
    """The definition: per frame, the first budget rows of a stable descending sort, ascending."""
    out, start = [], 0
    for n, k in zip(counts, budgets, strict=True):
        order = torch.sort(scores[start : start + n], descending=True, stable=True).indices[: min(k, n)]
        out += (torch.sort(order).values + start).tolist()
        start += n
    return out


@PROPS
@given(
    counts=st.lists(st.integers(0, 12), min_size=1, max_size=5),
    data=st.data(),
    coarse=st.booleans(),
)
def test_select_per_frame_is_a_stable_top_k(counts: list[int], data: st.DataObject, coarse: bool) -> None:
    n = sum(counts)
    values = data.draw(st.lists(st.floats(-3, 3, width=32), min_size=n, max_size=n))
    scores = torch.tensor(values, dtype=torch.float32)
    if coarse:  # many exact ties
        scores = torch.round(scores)
    budgets = [data.draw(st.integers(0, c + 2)) for c in counts]
    frame = torch.repeat_interleave(torch.arange(len(counts)) + 3, torch.tensor(counts))
    got = select_per_frame(scores, frame, torch.tensor(budgets), first_frame=3)
    assert got.tolist() == _by_sorting(scores, counts, budgets)


def test_frame_layout() -> None:
    tok = VisualTokens.from_frames(torch.randn(3, 4, 2), (2, 2), first_frame=5)
    layout = FrameLayout.of(tok)
    assert (layout.per_frame, layout.counts.tolist(), layout.index.tolist()[:5]) == (
        4,
        [4, 4, 4],
        [0] * 4 + [1],
    )
    ragged = FrameLayout.of(tok.take(torch.tensor([0, 1, 5, 8, 9, 10])))
    assert (ragged.per_frame, ragged.counts.tolist()) == (None, [2, 1, 3])
    x = torch.arange(6.0)[:, None]
    assert ragged.mean(x).reshape(-1).tolist() == [0.5, 2.0, 4.0]


@PROPS
@given(
    rows=st.integers(1, 40),
    cols=st.integers(1, 20),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
    seed=st.integers(0, 99),
)
def test_channel_variance_equals_torch_var(rows: int, cols: int, scale: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(rows, cols, generator=gen) + torch.randn(cols, generator=gen) * 10) * scale
    assert torch.equal(channel_variance(x), x.var(dim=0, correction=0))


def test_gaussian_similarity_adds_bandwidths_in_order() -> None:
    x = torch.nn.functional.normalize(torch.randn(50, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    c = x.mean(0)
    alphas = (0.125, 0.25, 0.5, 1.0, 2.0)
    d2 = ((x - c) ** 2).sum(-1)
    want = torch.exp(-d2 / 0.25)
    for a in alphas[1:]:
        want = want + torch.exp(-d2 / (2 * a))
    assert torch.equal(gaussian_similarity(x, c, alphas), want)


def test_memory_peek_is_pure_and_commit_stores() -> None:
    memory = ChunkMeans()
    step = memory.peek(torch.tensor([1.0, 3.0]), "m")
    assert memory == ChunkMeans() and step.mean.tolist() == [1.0, 3.0]
    memory.commit(step)
    memory.commit(memory.peek(torch.tensor([3.0, 5.0]), "m"))
    assert memory.count == 2 and memory.total.tolist() == [4.0, 8.0]
    with pytest.raises(ValueError, match="m memory holds 2-channel means.*feature width"):
        memory.peek(torch.zeros(3), "m")


def test_a_failure_after_the_plan_leaves_stc_pruner_state_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    pruner = StcPruner(tokens_per_frame=2)
    state = pruner.new_state()
    gen = torch.Generator().manual_seed(1)
    pruner.apply(
        VisualTokens.from_frames(torch.randn(1, 9, 6, generator=gen), (3, 3)), state, ChunkInfo(0, 0, 1)
    )
    saved = (state.total.clone(), state.count, state.last)

    def broken_take(self, index):
        raise RuntimeError("gather failed")

    monkeypatch.setattr(VisualTokens, "take_ascending", broken_take)
    with pytest.raises(RuntimeError, match="gather failed"):
        pruner.apply(VisualTokens.from_frames(torch.randn(1, 9, 6), (3, 3), 1), state, ChunkInfo(1, 1, 1))
    assert torch.equal(state.total, saved[0]) and state.count == saved[1] and state.last is saved[2]


# ------------------------------------------------------------------ the protocol for authors
class _Params(PerFrameParams):
    tokens_per_frame: int = 2


class _LastRows(ScoringPruner):
    name, stage, Params = "last_rows", Stage.PRE_PREFILL, _Params

    def score(self, tokens: VisualTokens, state: Any, chunk: ChunkInfo) -> torch.Tensor:
        return tokens.local_index().float()


@dataclass
class _Seen:
    chunks: int = 0


class _CountsInPlan(_LastRows):
    """Wrong on purpose: updates its state while planning."""

    name, stateful = "counts_in_plan", True

    def new_state(self) -> _Seen:
        return _Seen()

    def score(self, tokens: VisualTokens, state: _Seen, chunk: ChunkInfo) -> torch.Tensor:
        state.chunks += 1
        return tokens.local_index().float() * (-1) ** state.chunks


@given(tok=visual_tokens(frames=st.integers(1, 3)))
@settings(max_examples=20, deadline=None)
def test_score_only_pruner_gets_budgets_checks_and_counts(tok: VisualTokens) -> None:
    pruner = _LastRows()
    t = tok.count // tok.num_frames
    (out,) = check_token_strategy(pruner, [tok])
    assert out.count == pruner.planned_count(t, tok.num_frames) == min(2, t) * tok.num_frames
    assert bool((tok.local_index()[out.source] >= t - 2).all())


def test_the_conformance_check_catches_a_plan_that_changes_state() -> None:
    tok = VisualTokens.from_frames(torch.randn(1, 4, 3), (2, 2))
    with pytest.raises(AssertionError, match=r"plan\(\) must not change the state"):
        check_token_strategy(_CountsInPlan(), tok, chunks=1)


def test_a_pruner_without_a_budget_must_plan_its_own() -> None:
    class NoBudget(ScoringPruner):
        name, stage, Params = "no_budget", Stage.PRE_PREFILL, StrategyParams

        def score(self, tokens, state, chunk):
            return tokens.local_index().float()

    with pytest.raises(TypeError, match="PerFrameParams.*plan"):
        NoBudget()

    class OwnBudget(NoBudget):
        def plan(self, tokens: VisualTokens, state: Any, chunk: ChunkInfo) -> Plan:
            layout = FrameLayout.of(tokens)
            return Plan(self.score(tokens, state, chunk), torch.ones_like(layout.counts), layout)

    pruner = OwnBudget()
    out = pruner.apply(VisualTokens.from_frames(torch.randn(2, 4, 3), (2, 2)), None, ChunkInfo(0, 0, 2))
    assert out.source.tolist() == [3, 7] and pruner.planned_count(4, 2) is None


# ------------------------------------------------------------- contracts at run time
def _fault(model: Any, name: str, frames: int = 1) -> str:
    from tests.support.models import random_frames
    from tests.support.strategy_contract_fakes import contract_pipeline
    from tokencompress.api.errors import PluginFault

    with contract_pipeline(name, frames).apply(model) as bound:
        s = bound.stream()
        with pytest.raises(PluginFault) as exc:
            s.add_frames(random_frames(frames))
        assert s.chunks_done == 0 and s.llm.length == 0  # the chunk was rolled back
    return str(exc.value)


def test_a_count_other_than_planned_count_is_a_named_fault(tiny_llava_ov) -> None:
    """A run used to end with exit 0 on a strategy that broke the count it promised (a serving engine
    sizes its buffers from ``planned_count``); only the testing kit noticed."""
    assert _fault(tiny_llava_ov, "overshoot", 2) == (
        "strategy 'overshoot' (pkg-contracts source) failed at pre_prefill, chunk 0: apply() returned 10 tokens, "
        "but planned_count() promised 8 for 2 frame(s) of 16 tokens; make them agree, or return None from "
        "planned_count() (dynamic_count = True) if the count depends on the data"
    )


def test_a_data_dependent_count_is_not_checked(tiny_llava_ov) -> None:
    from tests.support.models import random_frames
    from tests.support.strategy_contract_fakes import contract_pipeline

    with contract_pipeline("adaptive", 2).apply(tiny_llava_ov) as bound:
        (stats,) = bound.stream().add_frames(random_frames(2))
    assert stats.pre_prefill == (32, 10)


def test_ragged_input_is_not_checked_against_planned_count() -> None:
    from tests.support.strategy_contract_fakes import Overshoot
    from tokencompress.plugins.faults import Attribution, check_planned

    tok = VisualTokens.from_frames(torch.randn(2, 6, 3), (2, 3))
    ragged = tok.take(torch.tensor([0, 1, 2, 6, 7]))  # 3 and 2 tokens: planned_count has no answer
    out = ragged.take(torch.tensor([0, 1, 3, 4]))
    check_planned(Attribution(None), Overshoot(), "pre_prefill, chunk 0", ragged, out)  # no fault
    with pytest.raises(Exception, match=r"apply\(\) returned 4 tokens, but planned_count\(\) promised 8"):
        check_planned(Attribution(None), Overshoot(), "pre_prefill, chunk 0", tok, out)


@pytest.mark.parametrize(
    ("name", "detail"),
    [
        ("short_scores", "ValueError: score() returned scores of shape (15,), expected [16] (one per token"),
        ("list_scores", "ValueError: score() returned scores of type list, expected a tensor [16]"),
        ("long_budgets", "ValueError: plan() returned budgets of shape (2,), expected [1] (one per frame"),
        ("no_plan", "ValueError: plan() returned tuple, expected a Plan"),
    ],
)
def test_a_malformed_plan_is_a_named_fault(tiny_llava_ov, name: str, detail: str) -> None:
    """A score() of the wrong length used to surface as torch's ``shape '[-1, 16]' is invalid``."""
    message = _fault(tiny_llava_ov, name)
    assert message.startswith(f"strategy '{name}' (pkg-contracts source) failed at pre_prefill, chunk 0: ")
    assert detail in message and "\n" not in message
