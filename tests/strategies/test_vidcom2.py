"""VidCom²: reference fixtures, docs/design.md §8 properties, the exact-total reconcile and
parameter errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from safetensors.torch import save_file

from tests.support.fixture_cases import Case, collect, is_exact, need, params
from tests.support.streams import streams
from tokencompress.api.errors import BudgetError
from tokencompress.api.scoring_pruner import select_per_frame
from tokencompress.api.strategy import ChunkInfo
from tokencompress.api.tokens import VisualTokens
from tokencompress.api.types import Stage, StageInfo
from tokencompress.strategies.vidcom2 import VidCom2, reconcile_budgets
from tokencompress.strategies.vidcom2_stream import VidCom2Stream, VidCom2StreamAnalysis, VidCom2StreamState
from tokencompress.testing import check_token_strategy, visual_tokens

PROPS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RATIOS = st.floats(0.01, 1.0)
STREAM_SCORES = st.sampled_from(["original", "two_score", "only_memory"])
OFFLINE_VARIANTS = {"vidcom2", "vidcom2_llava_video_grid_layout"}
STREAMING_VARIANTS = {"stc_streaming_baseline"}


# ------------------------------------------------------------------ fixtures
def _compare(case: Case, keys: tuple[str, ...], got: torch.Tensor, want: torch.Tensor, what: str) -> float:
    """Assert ``got`` matches ``want`` within the first of ``keys``'s tolerance; return the max abs error."""
    tol = case.tolerance(*keys)
    got = got.reshape(want.shape)
    if is_exact(tol):
        assert got.dtype == want.dtype or not want.is_floating_point(), f"{case.name}: {what} dtype"
        assert torch.equal(got.to(want.dtype), want), f"{case.name}: {what} differs"
        return 0.0
    torch.testing.assert_close(got.float(), want.float(), **tol, msg=lambda m: f"{case.name}: {what}: {m}")
    return float((got.float() - want.float()).abs().max()) if want.numel() else 0.0


def _grid(case: Case, t: int) -> tuple[int, int]:
    g = case.meta.get("grid", case.meta.get("input", {}).get("grid"))
    if g is not None:
        return (int(g), int(g))
    side = math.isqrt(t)
    return (side, side) if side * side == t else (1, t)


def _features(case: Case, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    x = tensors["features"]
    shape = tuple(need(case.meta, "input", "shape", where=case.name))
    assert tuple(x.shape) == shape, f"{case.name}: features have shape {tuple(x.shape)}, sidecar says {shape}"
    return x.float()


def _offline_for(case: Case, **overrides) -> VidCom2:
    p = need(case.meta, "params", where=case.name)
    kw = dict(
        retention_ratio=need(p, "retention_ratio", where=case.name),
        temperature=need(p, "softmax_temperature", where=case.name),
        channel_fraction=need(p, "channel_fraction", where=case.name),
        alphas=tuple(need(p, "gaussian_alphas", where=case.name)),
    )
    return VidCom2(**{**kw, **overrides})


def _llava_video_grid_index(source: torch.Tensor, budgets: torch.Tensor, t: int, g: int) -> torch.Tensor:
    """The reference's LLaVA-Video gather, as its target would do it from our selection.

    Per frame: kept tokens mapped into the ``g x (g+1)`` newline grid, then all ``g`` newline slots.
    """
    per_frame = torch.split(source, budgets.tolist())
    out = []
    for f, kept in enumerate(per_frame):
        local = kept - f * t
        start = f * g * (g + 1)
        out += [start + (local // g) * (g + 1) + local % g, start + torch.arange(g) * (g + 1) + g]
    return torch.cat(out)


def _check_offline_case(case: Case) -> dict[str, float]:
    tensors = case.tensors()
    x = _features(case, tensors)
    f, t, _ = x.shape
    p = case.meta["params"]
    assert (p.get("num_frames", f), p.get("tokens_per_frame", t)) == (f, t), (
        f"{case.name}: params disagree with shape"
    )
    strategy = _offline_for(case)
    tok = VisualTokens.from_frames(x, _grid(case, t))
    a = strategy.analyse(tok)
    out = strategy.apply(tok, strategy.new_state(), ChunkInfo(0, 0, f))
    errors: dict[str, float] = {}

    idx = ("indices_and_budgets", "indices")
    _compare(case, idx, a.budgets, tensors["frame_budgets"], "frame_budgets")
    assert a.budgets.tolist() == need(case.meta, "expected", "frame_budgets", where=case.name)
    assert out.counts().tolist() == a.budgets.tolist()
    assert out.count == need(case.meta, "expected", "total_kept", where=case.name)
    _compare(case, idx, out.source % t, tensors["kept_local_indices"], "kept_local_indices")
    want_local = need(case.meta, "expected", "kept_local_indices", where=case.name)
    assert [s.tolist() for s in torch.split(out.source % t, a.budgets.tolist())] == want_local
    chans = sorted(a.selected_channels.tolist())
    assert chans == sorted(tensors["selected_channels"].tolist()), (
        f"{case.name}: selected channels (as a set)"
    )
    assert chans == need(case.meta, "expected", "selected_channels_sorted", where=case.name)

    for key, got in (("video_score", a.video_score), ("frame_score", a.frame_score)):
        errors[key] = _compare(case, ("scores",), got, tensors[key], key)
    for key, got in (("frame_uniqueness", a.uniqueness), ("frame_scales", a.scales)):
        errors[key] = _compare(case, ("scales_and_uniqueness",), got, tensors[key], key)

    layout = need(case.meta, "params", "layout", where=case.name)
    if layout == "linear":
        _compare(case, idx, out.source, tensors["kept_global_indices"], "kept_global_indices")
        _compare(case, ("output",), out.tokens.to(tensors["output"].dtype), tensors["output"], "output")
    elif layout == "grid":
        g = int(need(case.meta, "grid", where=case.name))
        assert g * g == t, f"{case.name}: grid {g} does not hold {t} tokens"
        index = _llava_video_grid_index(out.source, a.budgets, t, g)
        _compare(case, idx, index, tensors["kept_global_indices"], "kept_global_indices (grid)")
        gathered = tensors["grid_features"][index]
        _compare(case, ("output",), gathered, tensors["output"], "output (grid)")
    else:
        pytest.fail(f"{case.name}: unknown layout {layout!r}")

    planned = strategy.planned_count(t, f)
    assert planned is None or planned == out.count, f"{case.name}: planned_count {planned} != {out.count}"
    if f == 1:
        assert planned == out.count, f"{case.name}: a single frame's count is known from shapes"
    return errors


def _check_streaming_case(case: Case) -> dict[str, float]:
    tensors = case.tensors()
    x = _features(case, tensors)
    f, t, _ = x.shape
    p = need(case.meta, "params", where=case.name)
    per_chunk = int(need(p, "chunk_frames", where=case.name))
    chunks = int(need(p, "num_chunks", where=case.name))
    k = int(need(p, "tokens_kept_per_frame", where=case.name))
    assert per_chunk * chunks == f and p.get("tokens_per_frame", t) == t, (
        f"{case.name}: params disagree with shape"
    )
    modes = need(p, "modes", where=case.name)
    if not modes:
        pytest.fail(f"{case.name}: no streaming modes in the sidecar")
    errors: dict[str, float] = {}
    for mode in modes:
        strategy = VidCom2Stream(
            tokens_per_frame=k,
            stream_score=mode,
            channel_fraction=need(p, "channel_fraction", where=case.name),
            alphas=tuple(need(p, "gaussian_alphas", where=case.name)),
        )
        state = strategy.new_state()
        local, rows, analyses = [], [], []
        for c in range(chunks):
            lo = c * per_chunk
            tok = VisualTokens.from_frames(x[lo : lo + per_chunk], _grid(case, t), first_frame=lo)
            analyses.append(strategy.analyse(tok, state))  # pure: does not touch the memory
            out = strategy.apply(tok, state, ChunkInfo(c, lo, per_chunk))
            assert out.counts().tolist() == [k] * per_chunk
            assert strategy.planned_count(t, per_chunk) == out.count
            local.append(out.source % t)  # sources index this chunk's own [F*T] layout
            rows.append(out.tokens)
        _compare(
            case, ("indices",), torch.cat(local), tensors[f"{mode}/kept_local_indices"], f"{mode} indices"
        )
        want_local = need(case.meta, "expected", mode, "kept_local_indices", where=case.name)
        assert torch.cat(local).tolist() == [i for frame in want_local for i in frame]
        out_rows = torch.cat(rows).to(tensors[f"{mode}/output"].dtype)
        _compare(case, ("output",), out_rows, tensors[f"{mode}/output"], f"{mode} output")
        # The "global" term of each mode: the chunk mean for original, the memory otherwise.
        glob = [a.video_score if mode == "original" else a.memory_score for a in analyses]
        err = _compare(
            case, ("scores",), torch.stack(glob), tensors[f"{mode}/memory_score"], f"{mode} memory_score"
        )
        errors[f"{mode}/memory_score"] = err
        assert _stack(analyses, "memory").shape == tensors["memory_tokens"].shape
        errors["memory_tokens"] = _compare(
            case, ("scores",), _stack(analyses, "memory"), tensors["memory_tokens"], "memory"
        )
        chans = _stack(analyses, "selected_channels")
        _compare(case, ("indices",), chans, tensors["chunk_selected_channels"], "chunk_selected_channels")
        for key in ("frame_score", "video_score"):
            errors[key] = _compare(case, ("scores",), _stack(analyses, key), tensors[key], key)
    return errors


def _stack(analyses: list[VidCom2StreamAnalysis], field: str) -> torch.Tensor:
    return torch.stack([getattr(a, field) for a in analyses])


@pytest.mark.parametrize("case", params("vidcom2"))
def test_vidcom2_fixture(case: Case) -> None:
    variant = case.meta.get("variant")
    if variant in OFFLINE_VARIANTS:
        errors = _check_offline_case(case)
    elif variant in STREAMING_VARIANTS:
        errors = _check_streaming_case(case)
    else:
        pytest.fail(f"{case.name}: unknown variant {variant!r}; the test cannot read this case")
    print(f"{case.name} max abs errors: " + ", ".join(f"{k}={v:.2e}" for k, v in errors.items()))


def _offline_cases() -> list:
    cases = [c for c in collect("vidcom2") if c.meta.get("variant") in OFFLINE_VARIANTS]
    return [pytest.param(c, id=c.name) for c in cases] or [
        pytest.param(None, marks=pytest.mark.skip("no cases"))
    ]


@pytest.mark.parametrize("case", _offline_cases())
def test_half_precision_input_is_scored_in_float32(case: Case) -> None:
    """A float16 carrier (the fixtures are exact in f16) selects as float32 and keeps its own rows."""
    tensors = case.tensors()
    x = tensors["features"].half()
    t = x.shape[1]
    tok = VisualTokens.from_frames(x, _grid(case, t))
    out = _offline_for(case).apply(tok, None, ChunkInfo(0, 0, x.shape[0]))
    assert out.tokens.dtype == torch.float16
    assert torch.equal(out.source % t, tensors["kept_local_indices"])


@pytest.mark.parametrize("case", _offline_cases())
def test_exact_total_on_fixtures(case: Case) -> None:
    """exact_total hits round(r T F), or the per-frame minimum where that keeps more, and only moves
    the boundary: per frame, kept sets are nested."""
    tensors = case.tensors()
    x = _features(case, tensors)
    f, t, _ = x.shape
    tok = VisualTokens.from_frames(x, _grid(case, t))
    ref = _offline_for(case).apply(tok, None, ChunkInfo(0, 0, f))
    strategy = _offline_for(case, exact_total=True)
    out = strategy.apply(tok, None, ChunkInfo(0, 0, f))
    r = need(case.meta, "params", "retention_ratio", where=case.name)
    floor = min(strategy.params.min_tokens_per_frame, t) * f
    assert out.count == strategy.planned_count(t, f) == min(t * f, max(floor, round(r * t * f)))
    assert abs(out.counts() - ref.counts()).max() <= 1 or bool((ref.counts() == t).any())
    ref_frames = torch.split(ref.source, ref.counts().tolist())
    for a, b in zip(ref_frames, torch.split(out.source, out.counts().tolist()), strict=True):
        sa, sb = set(a.tolist()), set(b.tolist())
        assert sa <= sb or sb <= sa


def test_exact_total_accepts_a_case_whose_minimum_outweighs_the_ratio(tmp_path, monkeypatch) -> None:
    """A further case where min_tokens_per_frame x frames > round(r T F) (README-shaped, found through
    TOKENCOMPRESS_EXTRA_FIXTURES) passes the exact_total check: the minimum wins, as planned."""
    gen = torch.Generator().manual_seed(11)
    features = (torch.randn(8, 16, 8, generator=gen) * 4).round() / 4  # exact in float16
    folder = tmp_path / "vidcom2"
    folder.mkdir()
    params = {"retention_ratio": 0.02, "softmax_temperature": 0.01, "channel_fraction": 0.5}
    params |= {"gaussian_alphas": [0.125, 0.25, 0.5, 1.0, 2.0], "num_frames": 8, "tokens_per_frame": 16}
    meta = {"variant": "vidcom2", "input": {"shape": [8, 16, 8]}, "params": params | {"layout": "linear"}}
    (folder / "p90_min_outweighs_ratio.json").write_text(json.dumps(meta))
    save_file({"features": features.half()}, str(folder / "p90_min_outweighs_ratio.safetensors"))
    monkeypatch.setenv("TOKENCOMPRESS_EXTRA_FIXTURES", str(tmp_path))
    (case,) = [c for c in collect("vidcom2") if c.name == "p90_min_outweighs_ratio"]
    assert round(0.02 * 16 * 8) < 8  # the case is the one the check used to refuse
    test_exact_total_on_fixtures(case)


def test_plan_is_pure_and_apply_selects_from_it() -> None:
    """apply() is plan, the base's per-frame selection and the gather: the plan's budgets are the
    analysis's, and planning twice changes nothing."""
    gen = torch.Generator().manual_seed(3)
    tok = VisualTokens.from_frames(torch.randn(5, 16, 12, generator=gen), (4, 4))
    strategy = VidCom2(retention_ratio=0.3, temperature=0.05)
    chunk = ChunkInfo(0, 0, 5)
    plan = strategy.plan(tok, None, chunk)
    assert torch.equal(plan.budgets, strategy.analyse(tok).budgets)
    assert torch.equal(plan.scores, strategy.plan(tok, None, chunk).scores)
    via_plan = tok.take(select_per_frame(plan.scores, tok.frame, plan.budgets, tok.first_frame))
    assert torch.equal(strategy.apply(tok, None, chunk).source, via_plan.source)


# ---------------------------------------------------------------- properties
@PROPS
@given(
    tok=visual_tokens(frames=st.integers(1, 4)),
    ratio=RATIOS,
    minimum=st.integers(1, 4),
    temperature=st.sampled_from([0.01, 0.1, 1.0]),
    exact=st.booleans(),
    chunks=st.integers(1, 2),
)
def test_offline_pruning_invariants(
    tok: VisualTokens, ratio: float, minimum: int, temperature: float, exact: bool, chunks: int
) -> None:
    strategy = VidCom2(
        retention_ratio=ratio, min_tokens_per_frame=minimum, temperature=temperature, exact_total=exact
    )
    outs = check_token_strategy(strategy, tok, chunks=chunks)
    t = tok.count // tok.num_frames
    for out in outs:
        counts = out.counts()
        assert bool((counts >= min(minimum, t)).all()) and bool((counts <= t).all())
    planned = strategy.planned_count(t, tok.num_frames)
    if exact or tok.num_frames == 1 or ratio == 1.0 or minimum >= t:
        assert planned == outs[0].count


@PROPS
@given(
    frames=st.integers(1, 12),
    t=st.integers(1, 60),
    ratio=RATIOS,
    minimum=st.integers(1, 5),
    temperature=st.sampled_from([0.001, 0.01, 0.3]),
    seed=st.integers(0, 2**31),
)
def test_exact_total_hits_planned_count(
    frames: int, t: int, ratio: float, minimum: int, temperature: float, seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(frames, t, 6, generator=gen) * torch.rand(frames, 1, 1, generator=gen) * 3
    strategy = VidCom2(
        retention_ratio=ratio, min_tokens_per_frame=minimum, temperature=temperature, exact_total=True
    )
    out = strategy.apply(VisualTokens.from_frames(x, (1, t)), None, ChunkInfo(0, 0, frames))
    planned = strategy.planned_count(t, frames)
    assert out.count == planned
    assert planned == min(t * frames, max(min(minimum, t) * frames, round(ratio * t * frames)))


@PROPS
@given(tok=visual_tokens(frames=st.integers(1, 4)), keep=st.data(), ratio=RATIOS, exact=st.booleans())
def test_ragged_input(tok: VisualTokens, keep: st.DataObject, ratio: float, exact: bool) -> None:
    """After an earlier strategy frames hold different counts (some none); budgets follow each frame."""
    mask = torch.tensor(keep.draw(st.lists(st.booleans(), min_size=tok.count, max_size=tok.count)))
    ragged = tok.take(torch.nonzero(mask).reshape(-1))
    strategy = VidCom2(retention_ratio=ratio, exact_total=exact)
    (out,) = check_token_strategy(strategy, [ragged])
    have, kept = ragged.counts(), out.counts()
    assert bool((kept <= have).all()) and bool((kept[have > 0] >= 1).all())
    if exact:
        assert out.count == strategy.exact_target(have)


@PROPS
@given(stream=streams(), k=st.integers(1, 30), score=STREAM_SCORES)
def test_streaming_pruning_invariants(stream: list[VisualTokens], k: int, score: str) -> None:
    strategy = VidCom2Stream(tokens_per_frame=k, stream_score=score)
    t = stream[0].count // stream[0].num_frames
    for out in check_token_strategy(strategy, stream):
        assert out.counts().tolist() == [min(k, t)] * out.num_frames


@PROPS
@given(a=streams(), b=streams(), score=STREAM_SCORES)
def test_streams_do_not_share_memory(a: list[VisualTokens], b: list[VisualTokens], score: str) -> None:
    strategy = VidCom2Stream(tokens_per_frame=2, stream_score=score)
    alone_a, alone_b = check_token_strategy(strategy, a), check_token_strategy(strategy, b)
    sa, sb = strategy.new_state(), strategy.new_state()
    for c, (ta, tb) in enumerate(zip(a, b, strict=True)):
        oa = strategy.apply(ta, sa, ChunkInfo(c, ta.first_frame, ta.num_frames))
        ob = strategy.apply(tb, sb, ChunkInfo(c, tb.first_frame, tb.num_frames))
        assert torch.equal(oa.source, alone_a[c].source) and torch.equal(ob.source, alone_b[c].source)
    assert sa.count == sb.count == len(a)


@PROPS
@given(tok=visual_tokens(frames=st.integers(1, 4)), chunks=st.integers(1, 2))
def test_ratio_one_keeps_all_in_order(tok: VisualTokens, chunks: int) -> None:
    strategy = VidCom2(retention_ratio=1.0)
    out = check_token_strategy(strategy, tok, chunks=chunks)[0]
    for field in ("tokens", "frame", "pos", "source", "sizes", "assign"):
        assert torch.equal(getattr(out, field), getattr(tok, field)), field
    assert strategy.planned_count(tok.count // tok.num_frames, tok.num_frames) == tok.count


@PROPS
@given(stream=streams(), score=STREAM_SCORES)
def test_streaming_keep_all_is_identity(stream: list[VisualTokens], score: str) -> None:
    strategy = VidCom2Stream(tokens_per_frame=25, stream_score=score)
    for inp, out in zip(stream, check_token_strategy(strategy, stream), strict=True):
        for field in ("tokens", "frame", "pos", "source", "sizes", "assign"):
            assert torch.equal(getattr(out, field), getattr(inp, field)), field


@PROPS
@given(
    budgets=st.lists(st.integers(0, 20), min_size=1, max_size=8),
    data=st.data(),
    minimum=st.integers(1, 4),
)
def test_reconcile_budgets(budgets: list[int], data: st.DataObject, minimum: int) -> None:
    counts = torch.tensor([b + data.draw(st.integers(0, 10)) for b in budgets])
    lo = counts.clamp(max=minimum)
    start = torch.maximum(torch.tensor(budgets), lo)
    shares = torch.tensor([data.draw(st.floats(0, float(c) + 3)) for c in counts.tolist()])
    total = data.draw(st.integers(int(lo.sum()), int(counts.sum())))
    got = reconcile_budgets(start, shares, counts, minimum, total)
    assert int(got.sum()) == total
    assert bool((got >= lo).all()) and bool((got <= counts).all())
    # Every frame moves in the direction of the total, never against it.
    assert bool((got >= start).all()) if total >= int(start.sum()) else bool((got <= start).all())


def test_reconcile_is_largest_remainder() -> None:
    """Unbounded, the reconcile equals Hamilton's method: floors, then the largest remainders."""
    shares = torch.tensor([10.4, 20.45, 5.3, 7.85])  # sum 44.0
    counts = torch.tensor([100, 100, 100, 100])
    rounded = torch.round(shares).long()  # [10, 20, 5, 8] = 43
    assert reconcile_budgets(rounded, shares, counts, 1, 44).tolist() == [10, 21, 5, 8]
    assert reconcile_budgets(rounded, shares, counts, 1, 42).tolist() == [10, 20, 5, 7]


# ------------------------------------------------------------ edge behaviour
def test_single_frame_budget_is_round_r_t() -> None:
    tok = VisualTokens.from_frames(
        torch.randn(1, 196, 8, generator=torch.Generator().manual_seed(0)), (14, 14)
    )
    for ratio, want in ((0.25, 49), (0.15, 29), (0.5 / 196, 1), (1.5 / 196, 2), (2.5 / 196, 2)):
        strategy = VidCom2(retention_ratio=ratio)
        assert strategy.planned_count(196, 1) == want == strategy.apply(tok, None, ChunkInfo(0, 0, 1)).count


def test_tiny_ratio_keeps_the_minimum_per_frame() -> None:
    """round(r T) = 0 never empties a frame: each keeps min_tokens_per_frame (reference: 1)."""
    tok = VisualTokens.from_frames(
        torch.randn(6, 196, 8, generator=torch.Generator().manual_seed(1)), (14, 14)
    )
    out = VidCom2(retention_ratio=0.001).apply(tok, None, ChunkInfo(0, 0, 6))
    assert out.counts().tolist() == [1] * 6
    out = VidCom2(retention_ratio=0.001, min_tokens_per_frame=3).apply(tok, None, ChunkInfo(0, 0, 6))
    assert out.counts().tolist() == [3] * 6
    strategy = VidCom2(retention_ratio=0.001, exact_total=True)
    assert strategy.planned_count(196, 6) == 6 == strategy.apply(tok, None, ChunkInfo(0, 0, 6)).count


def test_unique_frame_gets_the_larger_budget() -> None:
    """With a sharp softmax the most unique frame gets about r(2 - 1/F) T, the others r(1 - 1/F) T."""
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(1, 64, 16, generator=gen)
    x = base + 0.01 * torch.randn(8, 64, 16, generator=gen)
    x[5] = torch.randn(64, 16, generator=gen)
    a = VidCom2(retention_ratio=0.25).analyse(VisualTokens.from_frames(x, (8, 8)))
    assert a.budgets.tolist() == [14] * 5 + [30] + [14] * 2


def test_streaming_needs_its_state() -> None:
    tok = VisualTokens.from_frames(torch.randn(1, 4, 6), (2, 2))
    with pytest.raises(TypeError, match="new_state"):
        VidCom2Stream(tokens_per_frame=2).apply(tok, None, ChunkInfo(0, 0, 1))


def test_streaming_width_change_is_refused() -> None:
    strategy = VidCom2Stream(tokens_per_frame=2)
    state = strategy.new_state()
    strategy.apply(VisualTokens.from_frames(torch.randn(1, 4, 6), (2, 2)), state, ChunkInfo(0, 0, 1))
    with pytest.raises(ValueError, match="feature width"):
        strategy.apply(VisualTokens.from_frames(torch.randn(1, 4, 8), (2, 2), 1), state, ChunkInfo(1, 1, 1))


def test_analyse_does_not_commit_the_memory() -> None:
    strategy = VidCom2Stream(tokens_per_frame=2, stream_score="two_score")
    state = strategy.new_state()
    tok = VisualTokens.from_frames(torch.randn(2, 4, 6), (2, 2))
    strategy.analyse(tok, state)
    strategy.plan(tok, state, ChunkInfo(0, 0, 2))
    assert state == VidCom2StreamState()
    strategy.apply(tok, state, ChunkInfo(0, 0, 2))
    assert state.count == 1


def test_a_failure_after_the_plan_leaves_the_memory_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks are transactional: the memory changes only once the chunk went through."""
    strategy = VidCom2Stream(tokens_per_frame=2, stream_score="two_score")
    state = strategy.new_state()
    gen = torch.Generator().manual_seed(4)
    first = VisualTokens.from_frames(torch.randn(1, 4, 6, generator=gen), (2, 2))
    strategy.apply(first, state, ChunkInfo(0, 0, 1))
    before = (state.total.clone(), state.count)
    second = VisualTokens.from_frames(torch.randn(1, 4, 6, generator=gen), (2, 2), first_frame=1)

    def broken_take(self, index):
        raise RuntimeError("gather failed")

    monkeypatch.setattr(VisualTokens, "take_ascending", broken_take)
    with pytest.raises(RuntimeError, match="gather failed"):
        strategy.apply(second, state, ChunkInfo(1, 1, 1))
    assert torch.equal(state.total, before[0]) and state.count == before[1]


# -------------------------------------------------------------------- errors
INFO = StageInfo(stage=Stage.PRE_PREFILL, tokens_per_frame=196, dim=896, grid=(14, 14))


def test_impossible_budgets_are_refused_at_build_time() -> None:
    VidCom2(min_tokens_per_frame=196).check(INFO)
    VidCom2Stream(tokens_per_frame=196).check(INFO)
    with pytest.raises(BudgetError, match=r"vidcom2\.min_tokens_per_frame = 197.*196"):
        VidCom2(min_tokens_per_frame=197).check(INFO)
    with pytest.raises(BudgetError, match=r"vidcom2_stream\.tokens_per_frame = 250.*196"):
        VidCom2Stream(tokens_per_frame=250).check(INFO)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"retention_ratio": 0.0}, "retention_ratio"),
        ({"retention_ratio": 1.01}, "retention_ratio"),
        ({"retention_ratio": -0.25}, "retention_ratio"),
        ({"retention_ratio": float("nan")}, "retention_ratio"),
        ({"temperature": 0.0}, "temperature"),
        ({"min_tokens_per_frame": 0}, "min_tokens_per_frame"),
        ({"channel_fraction": 0.0}, "channel_fraction"),
        ({"channel_fraction": 1.5}, "channel_fraction"),
        ({"alphas": ()}, "alphas"),
        ({"alphas": (0.5, -1.0)}, "alphas"),
        ({"mode": "online"}, "mode"),
        ({"base_scale": 0.25}, "base_scale"),
        ({"tokens_per_frame": 49}, "tokens_per_frame"),
        ({"stream_score": "two_score"}, "stream_score"),
        ({"mode": "streaming"}, "vidcom2_stream"),
    ],
)
def test_bad_parameters_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        VidCom2(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({}, "tokens_per_frame"),
        ({"tokens_per_frame": 0}, "tokens_per_frame"),
        ({"tokens_per_frame": 49, "retention_ratio": 0.5}, "retention_ratio"),
        ({"tokens_per_frame": 49, "exact_total": True}, "exact_total"),
        ({"tokens_per_frame": 49, "stream_score": "dart"}, "stream_score"),
        ({"tokens_per_frame": 49, "mode": "streaming"}, "mode"),
    ],
)
def test_bad_streaming_parameters_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        VidCom2Stream(**kwargs)


def test_configs_of_the_old_mode_field() -> None:
    """`mode: offline` (the old default, in every dump) still loads; `mode: streaming` names its successor."""
    assert VidCom2(mode="offline", retention_ratio=0.3).params == VidCom2(retention_ratio=0.3).params
    with pytest.raises(ValidationError, match="strategy: vidcom2_stream"):
        VidCom2(mode="streaming", tokens_per_frame=49)


def test_params_survive_a_dump_and_reload() -> None:
    for strategy in (VidCom2(exact_total=True), VidCom2Stream(tokens_per_frame=49)):
        assert type(strategy.params)(**strategy.params.model_dump()) == strategy.params
