"""EVS: reference fixtures (vLLM's evs.py), streaming adaptation, docs/design.md §8 properties and
parameter errors. One test per fixture case file, dispatched on its ``kind``."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tests.support.fixture_cases import Case, Checker, need, params, run_case
from tests.support.streams import streams
from tokencompress.api.strategy import ChunkInfo
from tokencompress.api.tokens import VisualTokens
from tokencompress.api.types import Stage, StageInfo
from tokencompress.strategies.evs import (
    FIRST_FRAME_SCORE,
    Evs,
    EvsState,
    evs_dissimilarity,
    retained_count,
    retention_index,
)
from tokencompress.strategies.evs_positions import media_positions, recompute_positions
from tokencompress.testing import check_token_strategy, visual_tokens

PROPS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RATES = st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 0.95])


# ------------------------------------------------------------------ fixtures
def _tolerance(case: Case, key: str) -> dict[str, float]:
    """atol/rtol of a tolerance given as a mapping (the sidecars add a ``note``)."""
    tol = need(case.meta, "tolerances", key, where=case.name)
    if not isinstance(tol, dict) or "atol" not in tol:
        pytest.fail(f"{case.name}: tolerances.{key} is not an atol/rtol mapping: {tol!r}")
    return {"atol": float(tol["atol"]), "rtol": float(tol.get("rtol", 0.0))}


def _check_mask(case: Case, chk: Checker, key: str, got: torch.Tensor, selection: dict) -> None:
    """Exact, or (``near_tie_swap``) the same count with differences only inside ``near_tie_indices``."""
    want = chk.expected[key]
    assert got.shape == want.shape, (case.name, key)
    rule = need(selection, "alternatives_rule", where=f"{case.name}: {key}")
    if rule == "strict" or torch.equal(got, want):
        chk.exact(key, got)
        return
    if rule != "near_tie_swap":
        pytest.fail(f"{case.name}: unknown alternatives_rule {rule!r}")
    allowed = set(need(selection, "near_tie_indices", where=case.name))
    diff = set(torch.nonzero(got != want).reshape(-1).tolist())
    assert int(got.sum()) == int(want.sum()) and diff <= allowed, (
        f"{case.name}: {key} differs outside near ties"
    )
    chk.used(key)


def _offline(case, chk, x, grid_thw, m, q, prefix, selection) -> torch.Tensor:
    """Run the strategy as one chunk holding the whole video; check the mask keys; return the mask."""
    t_n, h, w = (int(v) for v in grid_thw)
    grid = (h // m, w // m)
    tokens = VisualTokens.from_frames(x.reshape(t_n, grid[0] * grid[1], -1), grid)
    strategy, state = Evs(video_pruning_rate=q), EvsState()
    a = strategy.analyse(tokens, state)
    chk.close(
        f"{prefix}dissimilarity", a.dissimilarity.reshape(t_n, *grid), **_tolerance(case, "dissimilarity")
    )
    assert bool((a.dissimilarity[0] == FIRST_FRAME_SCORE).all()), (
        f"{case.name}: frame 0 must score exactly 255"
    )
    out = strategy.apply(tokens, EvsState(), ChunkInfo(0, 0, t_n))
    chk.exact(f"{prefix}retained_count", torch.tensor(out.count))
    mask = torch.zeros(tokens.count, dtype=torch.bool)
    mask[out.source] = True
    _check_mask(case, chk, f"{prefix}retention_mask", mask, selection)
    _check_mask(case, chk, f"{prefix}kept_indices", out.source, selection)
    if torch.equal(mask, chk.expected[f"{prefix}retention_mask"]):
        chk.exact(f"{prefix}kept_embeds", out.tokens)
    chk.used(f"{prefix}order", f"{prefix}video_embeds", f"{prefix}kept_embeds")
    return mask


def _check_count(case: Case) -> dict[str, float]:
    t = case.tensors()
    chk = Checker(case, t, {"atol": 0.0, "rtol": 0.0})
    assert t["q"].dtype == torch.float64, f"{case.name}: q must be float64 (the count is computed in double)"
    got = [
        retained_count(a, b, q)
        for a, b, q in zip(
            t["tokens_per_frame"].tolist(), t["num_frames"].tolist(), t["q"].tolist(), strict=True
        )
    ]
    chk.exact("retained", torch.tensor(got, dtype=torch.long))
    for edge in case.meta.get("float_truncation_edges", []):
        assert got[edge["row"]] == edge["reference"], f"{case.name}: row {edge['row']}"
    chk.used("tokens_per_frame", "num_frames", "q")
    return chk.done()


def _check_mask_case(case: Case) -> dict[str, float]:
    t = case.tensors()
    chk = Checker(case, t, {"atol": 0.0, "rtol": 0.0})
    for sub in need(case.meta, "subcases", where=case.name):
        p = need(sub, "prefix", where=case.name)
        grid_thw, m, q = need(sub, "grid_thw"), need(sub, "spatial_merge_size"), need(sub, "q")
        _offline(case, chk, t[f"{p}video_embeds"], grid_thw, m, q, p, need(sub, "selection", where=case.name))
    return chk.done()


def _check_qwen25(case: Case) -> dict[str, float]:
    t = case.tensors()
    p = need(case.meta, "params", where=case.name)
    chk = Checker(case, t, {"atol": 0.0, "rtol": 0.0})
    grid_thw = t["grid_thw"].tolist()
    assert grid_thw == need(p, "grid_thw"), f"{case.name}: grid_thw"
    m = need(p, "spatial_merge_size")
    sel = need(case.meta, "selection", where=case.name)
    mask = _offline(case, chk, t["video_embeds"], grid_thw, m, need(p, "q"), "", sel)
    media = media_positions(grid_thw, m, need(p, "tokens_per_second"), need(p, "second_per_grid_t"))
    chk.exact("media_positions", media)
    chk.exact("kept_positions", media[mask])
    chk.exact("evs_output", torch.cat([t["video_embeds"][mask], media[mask].float()], dim=1))
    chk.used("grid_thw")
    _check_prompt(case, chk, t, p, media[mask])
    return chk.done()


def _check_prompt(case: Case, chk: Checker, t: dict, p: dict, kept: torch.Tensor) -> None:
    """vLLM's recompute (the ``vllm_evs`` convention) in one step and in the chunked-prefill steps."""
    ids = t["prompt.input_ids"]
    vs = need(p, "vision_start_token_id")
    media = (need(p, "image_token_id"), need(p, "video_token_id"))
    pos, delta = recompute_positions(ids, [kept.T], t["prompt.mrope_in"], 0, vs, media)
    chk.exact("prompt.full.mrope_out", pos)
    chk.exact("prompt.full.delta", torch.tensor(delta))
    cur = t["prompt.mrope_in"]
    for op in need(case.meta, "chunked_prefill_ops", where=case.name):
        i = op["op"]
        lo, hi = op["video_rows"]
        block = t[f"prompt.chunk{i}.mm_positions"]
        chk.exact(f"prompt.chunk{i}.mm_positions", kept[lo:hi].T)
        cur, delta = recompute_positions(
            ids, [block] if hi > lo else [], cur, op["num_computed_tokens"], vs, media
        )
        chk.exact(f"prompt.chunk{i}.mrope_out", cur)
        chk.exact(f"prompt.chunk{i}.delta", torch.tensor(delta))
    chk.used("prompt.input_ids", "prompt.mrope_in")


def _check_stream(case: Case) -> dict[str, float]:
    t = case.tensors()
    p = need(case.meta, "params", where=case.name)
    chk = Checker(case, t, {"atol": 0.0, "rtol": 0.0})
    t_n, h, w = t["grid_thw"].tolist()
    m, q = need(p, "spatial_merge_size"), need(p, "q")
    grid = (h // m, w // m)
    tpf = grid[0] * grid[1]
    x = t["video_embeds"].reshape(t_n, tpf, -1)
    media = media_positions((t_n, h, w), m, need(p, "tokens_per_second"), need(p, "second_per_grid_t"))
    chk.exact("media_positions", media)
    strategy, state = Evs(video_pruning_rate=q), EvsState()
    masks, start = [], 0
    ops = need(case.meta, "ops", where=case.name)
    for c, n in enumerate(need(p, "chunks", where=case.name)):
        tokens = VisualTokens.from_frames(x[start : start + n], grid, first_frame=start)
        a = strategy.analyse(tokens, state)
        chk.close(
            f"chunk{c}.dissimilarity", a.dissimilarity.reshape(n, *grid), **_tolerance(case, "dissimilarity")
        )
        out = strategy.apply(tokens, state, ChunkInfo(c, start, n))
        chk.exact(f"chunk{c}.retained_count", torch.tensor(out.count))
        mask = torch.zeros(n * tpf, dtype=torch.bool)
        mask[out.source] = True
        _check_mask(case, chk, f"chunk{c}.retention_mask", mask, need(ops[c], "selection", where=case.name))
        glob = out.source + start * tpf
        chk.exact(f"chunk{c}.kept_indices", glob)
        chk.exact(f"chunk{c}.kept_embeds", out.tokens)
        chk.exact(f"chunk{c}.kept_positions", media[glob])
        masks.append(mask)
        start += n
    assert start == t_n, f"{case.name}: chunks cover {start} of {t_n} frames"
    chk.exact("stream.retention_mask", torch.cat(masks))
    off = Evs(video_pruning_rate=q).apply(VisualTokens.from_frames(x, grid), EvsState(), ChunkInfo(0, 0, t_n))
    offline = torch.zeros(t_n * tpf, dtype=torch.bool)
    offline[off.source] = True
    chk.exact("offline.retention_mask", offline)
    chk.exact("offline.retained_count", torch.tensor(off.count))
    chk.used("video_embeds", "grid_thw")
    return chk.done()


CHECKS = {"evs_count": _check_count, "evs_mask": _check_mask_case, "evs_qwen25": _check_qwen25}
CHECKS["evs_stream"] = _check_stream


@pytest.mark.parametrize("case", params("evs"))
def test_evs_fixture(case: Case) -> None:
    run_case(case, case.kind, CHECKS, "kind")


# ------------------------------------------------------------------ properties
@PROPS
@given(stream=streams(chunks=3), q=RATES)
def test_conformance(stream, q):
    check_token_strategy(Evs(video_pruning_rate=q), stream)


@PROPS
@given(stream=streams(chunks=3), q=RATES)
def test_counts_frame_zero_and_chunked_equals_the_streaming_rule(stream, q):
    """Chunk 0 keeps its frame 0 whole and max(T, int(N(1-q))); later chunks int(N(1-q)); every
    chunk keeps its own top-K of the *offline* dissimilarities (the carried frame makes them equal)."""
    whole = torch.cat([c.tokens for c in stream]).reshape(-1, stream[0].tokens_per_frame_in, stream[0].dim)
    offline = evs_dissimilarity(whole, None).reshape(-1)
    strategy, state = Evs(video_pruning_rate=q), EvsState()
    start = 0
    for i, tok in enumerate(stream):
        n, t = tok.count, tok.tokens_per_frame_in
        out = strategy.apply(tok, state, ChunkInfo(i, tok.first_frame, tok.num_frames))
        assert out.count == retained_count(t, tok.num_frames, q, first=i == 0)
        if i == 0:
            assert bool((out.source[:t] == torch.arange(t)).all())
        want = retention_index(offline[start : start + n], out.count)
        assert torch.equal(out.source, want)
        start += n


@PROPS
@given(tok=visual_tokens(frames=st.integers(1, 4), grid=(3, 3), dim=6), q=RATES)
def test_one_chunk_is_the_offline_reference_and_analyse_is_pure(tok, q):
    strategy, state = Evs(video_pruning_rate=q), EvsState()
    a = strategy.analyse(tok, state)
    assert state.last is None
    k = max(9, int(tok.count * (1 - q)))
    order = torch.argsort(a.dissimilarity.reshape(-1), descending=True, stable=True)[:k]
    assert torch.equal(a.index, torch.sort(order).values)
    out = strategy.apply(tok, state, ChunkInfo(0, 0, tok.num_frames))
    assert torch.equal(state.last, tok.tokens.reshape(tok.num_frames, 9, -1)[-1])
    assert out.count == (tok.count if q == 0 else k)


def test_quirks_zero_vector_and_ties():
    x = torch.zeros(3, 2, 4)
    x[0, :, 0] = 1.0
    x[2, 0, 0] = -1.0  # after a zero vector: cosine 0 (Q6), dissimilarity exactly 1
    d = evs_dissimilarity(x, None)
    assert d[0].tolist() == [255.0, 255.0] and d[1].tolist() == [1.0, 1.0] and d[2].tolist() == [1.0, 1.0]
    # stable descending: exact ties keep the lower flat index (Q4)
    assert retention_index(torch.tensor([1.0, 3, 2, 3, 0, 3]), 4).tolist() == [1, 2, 3, 5]
    assert retained_count(100, 1, 0.9, first=False) == 9 and retained_count(20, 8, 0.8) == 31  # Q3


def test_planned_count_only_when_the_first_chunk_floor_does_not_bind():
    assert Evs(video_pruning_rate=0.75).planned_count(16, 8) == 32
    assert Evs(video_pruning_rate=0.75).planned_count(16, 2) is None  # chunk 0 keeps 16, later ones 8
    assert Evs(video_pruning_rate=0.0).planned_count(16, 1) == 16


def test_needs_a_full_grid_and_one_grid_per_stream():
    tok = VisualTokens.from_frames(torch.randn(2, 4, 3), (2, 2))
    with pytest.raises(ValueError, match="put evs first"):
        Evs().apply(tok.take(torch.tensor([0, 1, 2])), EvsState(), ChunkInfo(0, 0, 2))
    state = EvsState()
    Evs().apply(tok, state, ChunkInfo(0, 0, 2))
    with pytest.raises(ValueError, match="one token grid"):
        Evs().apply(VisualTokens.from_frames(torch.randn(1, 9, 3), (3, 3), 2), state, ChunkInfo(1, 2, 1))


def test_placement_decides_the_stage():
    infos = {Stage.POST_VIT: StageInfo(Stage.POST_VIT, 16, 8, (4, 4))}
    assert Evs().effective_stage(infos) is Stage.PRE_PREFILL
    assert Evs(placement="encoder_tokens").effective_stage(infos) is Stage.POST_VIT


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, math.nan, "x"])
def test_rate_errors_name_the_field(value):
    with pytest.raises(ValidationError, match="video_pruning_rate"):
        Evs(video_pruning_rate=value)


def test_unknown_placement_is_an_error():
    with pytest.raises(ValidationError, match="placement"):
        Evs(placement="before_pool")


def test_prompt_recompute_fixes_q12_and_q13():
    """A step starting on the first media token is that media's start (Q13); a second media block
    of the same step is anchored at its own <|vision_start|> (Q12)."""
    vs, ve, pad = 100, 101, 102
    ids = torch.tensor([1, 2, 3, vs, pad, pad, pad, ve, 4, 5])
    block = media_positions((2, 2, 4), 2, 2, 1.0)[[0, 1, 3]].T  # 3 kept of 2x1x2 tokens
    start = torch.arange(10).expand(3, -1)
    full, delta = recompute_positions(ids, [block], start, 0, vs, [pad])
    assert full[:, 4:7].tolist() == [[4, 4, 6], [4, 4, 4], [4, 5, 5]] and full[0, 7:].tolist() == [6, 7, 8]
    head, _ = recompute_positions(ids, [], start, 0, vs, [pad])
    split, split_delta = recompute_positions(ids, [block], head, 4, vs, [pad])  # cursor on the first pad
    assert torch.equal(split, full) and split_delta == delta
    two = torch.tensor([1, vs, pad, pad, ve, 2, vs, pad, ve, 3])
    b1, b2 = block[:, :2], block[:, 2:]
    pos, _ = recompute_positions(two, [b1, b2], torch.arange(10).expand(3, -1), 0, vs, [pad])
    assert pos[:, 2:4].tolist() == (b1[:3] + 2).tolist()  # the first block is not written over
    assert pos[:, 7].tolist() == (b2[:3, 0] + int(pos[2, 6]) + 1).tolist()


def test_encoder_tokens_placement_runs_where_post_vit_may_change_the_count():
    from tokencompress import Pipeline, Registry
    from tokencompress.api.errors import CompatibilityError

    reg = Registry()
    stages = {"post_vit": [{"strategy": "evs", "placement": "encoder_tokens"}]}
    bound = Pipeline.from_dict({"target": "llava_next_video", "stages": stages}).bind(
        reg.target("llava_next_video").tiny_model()
    )
    assert bound.by_stage[Stage.POST_VIT] and not bound.notes
    with pytest.raises(CompatibilityError, match="'evs' changes the token count at post_vit"):
        Pipeline.from_dict({"target": "qwen2_vl", "stages": stages}).bind(reg.target("qwen2_vl").tiny_model())


@given(
    q=st.sampled_from([0.0, 0.1, 0.5, 0.75, 0.8, 0.9, 0.95]),
    per=st.integers(1, 300),
    frames=st.integers(1, 8),
    index=st.integers(0, 5),
)
def test_planned_count_at_is_exact_for_every_chunk_of_a_stream(
    q: float, per: int, frames: int, index: int
) -> None:
    """A serving engine lays a stream out before it runs: each chunk's count from its place and shape."""
    strategy = Evs(video_pruning_rate=q)
    got = strategy.planned_count_at(per, frames, index)
    assert got == retained_count(per, frames, q, first=index == 0)
    plain = strategy.planned_count(per, frames)
    assert plain is None or plain == got  # where the per-chunk count is one number, it is this one
