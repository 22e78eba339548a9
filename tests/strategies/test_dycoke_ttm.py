"""DyCoke TTM: reference fixtures (whole clip and stream), docs/design.md §8 properties, the streaming
rule, parameter errors and, on the Qwen targets, the M-RoPE positions of kept tokens."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tests.support.fixture_cases import Case, collect, need, params
from tests.support.streams import streams
from tokencompress import Pipeline
from tokencompress.api.errors import BudgetError, CompatibilityError
from tokencompress.api.strategy import ChunkInfo
from tokencompress.api.tokens import VisualTokens
from tokencompress.api.types import Stage, StageInfo
from tokencompress.strategies.dycoke_ttm import DycokeTTM, DycokeTTMState
from tokencompress.strategies.dycoke_ttm_select import keep_count, stream_count, stream_step, ttm_clip
from tokencompress.testing import check_token_strategy, moving_frames, visual_tokens

PROPS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TTM_KINDS = {"dycoke_ttm", "dycoke_ttm_stream"}
OTHER_KINDS = {"dycoke_kv", "dycoke_kv_decode"}  # the decode-time KV stage, tested with its own policy


# ------------------------------------------------------------------ fixtures
def _sim_row(case: Case, tensors: dict, prefix: str, frame_meta: dict) -> torch.Tensor:
    name, _, index = need(frame_meta, "sim_row", where=case.name).partition("[")
    return tensors[f"{prefix}{name}"][int(index.rstrip("]"))]


def _check_kept(case: Case, tensors: dict, prefix: str, frames: list, t: int, got: torch.Tensor) -> None:
    """``got`` (input rows, output order) equals ``{prefix}kept_indices``, frame by frame; a pruned frame
    may differ only as the sidecar's acceptable_alternatives allows (exact ties of its sim row)."""
    want = tensors[f"{prefix}kept_indices"]
    assert got.shape == want.shape, f"{case.name}: {got.numel()} kept, reference {want.numel()}"
    for meta in frames:
        lo, n = need(meta, "out_start", where=case.name), need(meta, "out_len", where=case.name)
        g, w = got[lo : lo + n], want[lo : lo + n]
        if torch.equal(g, w):
            continue
        f = need(meta, "frame", where=case.name)
        assert meta.get("rule") in {"pair", "window"}, f"{case.name}: frame {f} ({meta.get('rule')}) differs"
        sim = _sim_row(case, tensors, prefix, meta)
        gv, wv = sim[g - f * t], sim[w - f * t]
        assert bool((g // t == f).all()), f"{case.name}: frame {f} kept rows of another frame"
        assert bool((gv[1:] >= gv[:-1]).all()), f"{case.name}: frame {f} not in ascending similarity"
        assert torch.equal(gv.sort().values, wv.sort().values), f"{case.name}: frame {f} kept other values"


def _sims(case: Case, tensors: dict, prefix: str, got: dict[str, torch.Tensor]) -> float:
    tol = case.tolerance("sim_pairs/sim_windows", "sims")
    worst = 0.0
    for key, value in got.items():
        want = tensors[f"{prefix}{key}"]
        torch.testing.assert_close(value, want, **tol, msg=lambda m, k=key: f"{case.name}: {k}: {m}")
        worst = max(worst, float((value - want).abs().max()) if want.numel() else 0.0)
    return worst


def _clip(case: Case, tensors: dict, prefix: str, meta: dict) -> float:
    x = tensors[f"{prefix}image_feature"]
    t, k = need(meta, "tokens_per_frame", where=case.name), need(meta, "dycoke_k", where=case.name)
    if "raises" in meta:  # such a subcase holds only its input
        with pytest.raises(ValueError, match="no window to prune"):
            ttm_clip(x, t, k)
        return 0.0
    assert keep_count(k, t) == need(meta, "keep_per_pruned_frame", where=case.name)
    r = ttm_clip(x, t, k)
    frames = need(meta, "frames", where=case.name)
    _check_kept(case, tensors, prefix, frames, t, r.kept)
    if torch.equal(r.kept, tensors[f"{prefix}kept_indices"]):
        assert torch.equal(x[r.kept], tensors[f"{prefix}output"]), f"{case.name}: output rows differ"
    assert torch.equal(x[tensors[f"{prefix}kept_indices"]], tensors[f"{prefix}output"])
    assert r.kept.numel() == need(meta, "num_out", where=case.name)
    _strategy_on_clip(case, x, t, k, frames, r)
    return _sims(case, tensors, prefix, {"sim_pairs": r.sim_pairs, "sim_windows": r.sim_windows})


def _strategy_on_clip(case: Case, x: torch.Tensor, t: int, k: float, frames: list, clip) -> None:
    """The stream rule on the whole clip in one chunk keeps the clip's set in every frame that the
    reference's end-of-clip rules (Q2: last window's phase 2 whole; Q3: odd last frame dropped) leave alone."""
    f = x.shape[0] // t
    out = DycokeTTM(k=k).apply(_carrier(x, t), DycokeTTM().new_state(), ChunkInfo(0, 0, f))
    assert torch.equal(out.tokens, x[out.source])
    for meta in frames:
        i = meta["frame"]
        if meta["rule"] == "dropped" or (meta["rule"] == "full" and i % 4 == 2):
            continue
        mine = out.source[out.frame == i]
        ref = clip.frames[i] + i * t
        assert mine.numel() == ref.numel(), f"{case.name}: frame {i}"
        if not meta.get("selection", {}).get("exact_ties"):
            assert torch.equal(mine, ref.sort().values), f"{case.name}: frame {i} kept another set"


def _carrier(x: torch.Tensor, t: int, first_frame: int = 0) -> VisualTokens:
    side = math.isqrt(t)
    grid = (side, side) if side * side == t else (1, t)
    return VisualTokens.from_frames(x.view(-1, t, x.shape[1]), grid, first_frame)


def _check_ttm(case: Case) -> dict[str, float]:
    tensors = case.tensors()
    subcases = case.meta.get("subcases")
    if subcases is None:
        return {"sims": _clip(case, tensors, "", need(case.meta, "params", where=case.name))}
    assert len(subcases) == need(case.meta, "params", "subcases", where=case.name)
    return {f"s{i}.sims": _clip(case, tensors, f"s{i}.", meta) for i, meta in enumerate(subcases)}


def _check_stream(case: Case) -> dict[str, float]:
    tensors = case.tensors()
    p = need(case.meta, "params", where=case.name)
    t, k, x = p["tokens_per_frame"], p["dycoke_k"], tensors["image_feature"]
    keep = keep_count(k, t)
    ops = need(case.meta, "ops", where=case.name)
    assert [o["frames"][1] - o["frames"][0] for o in ops] == need(p, "chunks", where=case.name)
    # the kernel, frame by frame, anchors carried across chunks
    phase0 = phase2 = None
    kept, pairs, wins = [], [], []
    for c, op in enumerate(ops):
        lo, hi = op["frames"]
        rows = []
        for f in range(lo, hi):
            step = stream_step(x[f * t : (f + 1) * t], f % 4, keep, phase0, phase2)
            phase0, phase2 = step.phase0, step.phase2
            rows.append(step.kept + f * t)
            (wins if f % 4 == 2 else pairs if f % 2 else []).append(step.similarity)
        chunk = torch.cat(rows)
        assert chunk.numel() == op["num_out"] == stream_count(hi - lo, t, k, lo % 4)
        kept.append(chunk)
        assert torch.equal(tensors[f"chunk{c}.output"], x[tensors[f"chunk{c}.kept_indices"]])
    off = need(case.meta, "offline", where=case.name)
    _check_kept(case, tensors, "offline.", off["frames"], t, torch.cat(kept))
    for c, chunk in enumerate(kept):
        if not any(f.get("selection", {}).get("exact_ties") for f in off["frames"]):
            assert torch.equal(chunk, tensors[f"chunk{c}.kept_indices"]), f"{case.name}: chunk {c}"
    assert torch.equal(
        torch.cat([tensors[f"chunk{c}.output"] for c in range(len(ops))]), tensors["offline.output"]
    )
    _strategy_on_stream(case, tensors, t, k, ops)
    return {
        "sims": _sims(
            case, tensors, "offline.", {"sim_pairs": torch.stack(pairs), "sim_windows": torch.stack(wins)}
        )
    }


def _strategy_on_stream(case: Case, tensors: dict, t: int, k: float, ops: list) -> None:
    """The strategy on the same chunks: each chunk's rows are the reference's, in raster order per frame."""
    x, s = tensors["image_feature"], DycokeTTM(k=k)
    state = s.new_state()
    for c, op in enumerate(ops):
        lo, hi = op["frames"]
        out = s.apply(_carrier(x[lo * t : hi * t], t, lo), state, ChunkInfo(c, lo, hi - lo))
        got = out.source + lo * t
        want = tensors[f"chunk{c}.kept_indices"]
        assert torch.equal(got.sort().values, want.sort().values), f"{case.name}: chunk {c} kept another set"
        assert bool((got[1:] > got[:-1]).all()) and torch.equal(out.tokens, x[got])
        assert state.frames_seen == hi


CHECKS = {"dycoke_ttm": _check_ttm, "dycoke_ttm_stream": _check_stream}


@pytest.mark.parametrize("case", params("dycoke", TTM_KINDS))
def test_fixture(case: Case) -> None:
    errors = CHECKS[case.kind](case)
    print(f"{case.name}: max abs error {max(errors.values(), default=0.0):.3g} {errors}")


def test_every_dycoke_case_has_a_known_kind() -> None:
    """A case whose kind nobody checks must fail, not vanish (the KV kinds are checked with the KV policy)."""
    cases = collect("dycoke")
    assert any(c.kind in TTM_KINDS for c in cases)
    unknown = [c.name for c in cases if c.kind not in TTM_KINDS | OTHER_KINDS]
    assert not unknown, f"dycoke cases of unknown kind: {unknown}"


# ------------------------------------------------------------------ properties
K = st.sampled_from([0.0, 0.3, 0.5, 0.7, 0.9, 1.0])


@PROPS
@given(chunks=streams(chunks=3), k=K)
def test_conformance_and_counts(chunks: list[VisualTokens], k: float) -> None:
    s = DycokeTTM(k=k)
    outs = check_token_strategy(s, chunks)
    t, seen = chunks[0].tokens_per_frame_in, 0
    for inp, out in zip(chunks, outs, strict=True):
        assert out.count == stream_count(inp.num_frames, t, k, seen % 4)
        counts = out.counts()
        for i in range(inp.num_frames):
            assert int(counts[i]) == (t if (seen + i) % 4 == 0 else keep_count(k, t))
        seen += inp.num_frames


@PROPS
@given(
    tokens=visual_tokens(frames=st.integers(2, 13), grid=(2, 3), dim=st.integers(1, 8)), k=K, data=st.data()
)
def test_any_chunking_equals_one_chunk(tokens: VisualTokens, k: float, data: st.DataObject) -> None:
    """The rule is causal and per frame: how a stream is cut into chunks never changes what it keeps."""
    s, f, t = DycokeTTM(k=k), tokens.num_frames, tokens.tokens_per_frame_in
    whole = s.apply(tokens, s.new_state(), ChunkInfo(0, 0, f))
    cuts = sorted(data.draw(st.sets(st.integers(1, f - 1), max_size=f - 1)))
    state, got = s.new_state(), []
    for c, (lo, hi) in enumerate(zip([0, *cuts], [*cuts, f], strict=True)):
        x = tokens.tokens[lo * t : hi * t]
        chunk = VisualTokens.from_frames(x.view(-1, t, tokens.dim), (2, 3), lo)
        out = s.apply(chunk, state, ChunkInfo(c, lo, hi - lo))
        got.append(out.source + lo * t)
    assert torch.equal(torch.cat(got), whole.source)


@PROPS
@given(tokens=visual_tokens(frames=st.integers(3, 14), grid=(2, 2), dim=st.integers(1, 8)), k=K)
def test_stream_rule_is_the_clip_rule_with_the_clean_options(tokens: VisualTokens, k: float) -> None:
    """With last_window_pass2 and keep_unpaired_last the whole-clip reference keeps, frame by frame and in
    the same order, what the stream keeps; with F = 2 (mod 4) the parity reference does too."""
    x, t, f = tokens.tokens, 4, tokens.num_frames
    s = DycokeTTM(k=k)
    state = s.new_state()
    s.apply(tokens, state, ChunkInfo(0, 0, f))
    stream = torch.cat([st_.kept + i * t for i, st_ in enumerate(state.last)])
    assert torch.equal(ttm_clip(x, t, k, last_window_pass2=True, keep_unpaired_last=True).kept, stream)
    if f % 4 == 2:
        assert torch.equal(ttm_clip(x, t, k).kept, stream)


def test_failed_chunk_leaves_the_state_as_it_was() -> None:
    s = DycokeTTM()
    x = torch.randn(3, 4, 5)
    state = s.new_state()
    s.apply(VisualTokens.from_frames(x, (2, 2)), state, ChunkInfo(0, 0, 3))
    before = s.copy_state(state)
    bad = VisualTokens.from_frames(torch.randn(2, 9, 5), (3, 3), 3)  # another frame size mid-stream
    with pytest.raises(ValueError, match="tokens per frame changed"):
        s.apply(bad, state, ChunkInfo(1, 3, 2))
    assert state.frames_seen == before.frames_seen == 3
    assert state.phase0 is before.phase0 and state.phase2 is before.phase2


def test_ragged_input_is_refused() -> None:
    tokens = VisualTokens.from_frames(torch.randn(2, 4, 3), (2, 2)).take(torch.tensor([0, 1, 4, 5]))
    with pytest.raises(ValueError, match="put it first in stages.pre_prefill"):
        DycokeTTM().apply(tokens, DycokeTTMState(), ChunkInfo(0, 0, 2))


# ------------------------------------------------------------------ parameters
@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), float("inf"), "a lot"])
def test_bad_k_is_a_field_error(bad) -> None:
    with pytest.raises(ValidationError, match="k"):
        DycokeTTM(k=bad)


@pytest.mark.parametrize(("k", "t", "fix"), [(1.0, 196, "0.994"), (0.9, 10, "0.899"), (0.999, 196, "0.994")])
def test_k_that_keeps_nothing_is_refused_at_build(k: float, t: int, fix: str) -> None:
    info = StageInfo(Stage.PRE_PREFILL, t, 8, (1, t))
    with pytest.raises(BudgetError, match=r"dycoke_ttm\.k = .* keeps int\(\(1 - k\) \* .*\) = 0 tokens") as e:
        DycokeTTM(k=k).check(info)
    assert f"use k <= {fix.strip()}" in str(e.value)
    assert keep_count(float(fix), t) >= 1


def test_keep_truncates_a_double() -> None:
    assert keep_count(0.7, 196) == 58 and keep_count(0.9, 10) == 0 and keep_count(0.9, 20) == 1
    assert stream_count(32, 196, 0.7) == 8 * 196 + 24 * 58


def test_rekv_behind_it_is_refused_at_build(tiny_llava_ov) -> None:
    pipe = Pipeline.from_dict(
        {"stages": {"pre_prefill": [{"strategy": "dycoke_ttm"}], "kv_cache": [{"strategy": "rekv"}]}}
    )
    with pytest.raises(CompatibilityError, match="dycoke_ttm"):
        pipe.bind(tiny_llava_ov)


# ------------------------------------------------------------------ M-RoPE positions
QWEN = {"qwen2_vl": 128 * 128, "qwen2_5_vl": 112 * 112, "qwen3_vl": 128 * 128}
_TINY: dict[str, torch.nn.Module] = {}


def _positions(target: str, stages: dict, fpc: int, frames) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    """(kept sources, positions passed, next position after) of every chunk of one stream."""
    from tokencompress import Registry

    if target not in _TINY:
        _TINY[target] = Registry().target(target).tiny_model(seed=1)
    pipe = Pipeline.from_dict(
        {
            "target": target,
            "stream": {"frames_per_chunk": fpc, "fps": 2},
            "stages": stages,
            "target_options": {"max_pixels": QWEN[target]},
        }
    )
    seen = []
    with pipe.apply(_TINY[target]) as bound:
        original = bound.target.visual_positions

        def spy(state, tokens):
            pos = original(state, tokens)
            seen.append((tokens.source.clone(), pos[:, 0].clone(), state.next_position))
            return pos

        bound.target.visual_positions = spy
        s = bound.stream()
        s.prefill_ids(torch.tensor([11, 12, 13]))
        s.add_frames(frames)
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("target", sorted(QWEN))
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(k=st.sampled_from([0.5, 0.7, 0.9]), fpc=st.sampled_from([2, 4, 6]))
def test_kept_tokens_keep_their_unpruned_mrope_positions(target: str, k: float, fpc: int) -> None:
    frames = moving_frames(12, seed=5)
    full = _positions(target, {}, fpc, frames)
    pruned = _positions(target, {"pre_prefill": [{"strategy": "dycoke_ttm", "k": k}]}, fpc, frames)
    assert len(full) == len(pruned) == 12 // fpc
    for (src0, pos0, next0), (src, pos, nxt) in zip(full, pruned, strict=True):
        assert torch.equal(src0, torch.arange(src0.numel())) and nxt == next0
        tpf = 16
        slices = src0.numel() // tpf
        if target != "qwen3_vl":  # one start and one end around the chunk's tokens
            expected = torch.cat([pos0[:, :1], pos0[:, 1 + src], pos0[:, -1:]], 1)
        else:  # per slice: its lead (timestamp, start), its own tokens, its end
            width = pos0.shape[1] // slices
            lead = width - tpf - 1
            parts = []
            for j in range(slices):
                g = pos0[:, j * width : (j + 1) * width]
                local = src[(src // tpf) == j] % tpf
                parts += [g[:, :lead], g[:, lead + local], g[:, -1:]]
            expected = torch.cat(parts, 1)
        assert torch.equal(pos, expected)
