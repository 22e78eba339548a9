"""StreamingTOM CTR: reference fixtures (ctr and saliency kinds), docs/design.md §8 properties,
streaming equality, the wiring on LLaVA-OneVision, M-RoPE positions on Qwen, parameter errors."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from torch import nn
from transformers import SiglipVisionConfig
from transformers.models.siglip.modeling_siglip import SiglipEncoderLayer

from tests.support.fixture_cases import Case, Checker, collect, need, params, parse_tolerance
from tests.support.models import random_frames
from tests.support.streams import streams
from tests.targets.test_qwen_vl import FRAMES, TARGETS, pipeline, plain_positions, tiny
from tokencompress import Pipeline
from tokencompress.api.errors import BudgetError, CompatibilityError
from tokencompress.api.tokens import VisualTokens
from tokencompress.api.types import ChunkInfo, LayerProbe, Stage, StageInfo
from tokencompress.strategies.streamingtom_ctr import StreamingTomCtr, StreamingTomCtrState
from tokencompress.strategies.streamingtom_ctr_reduce import dpc_centres, static_masks
from tokencompress.targets.llava.llava_onevision import LlavaOnevisionTarget
from tokencompress.targets.llava.siglip_block import SiglipBlockAdapter
from tokencompress.testing import check_token_strategy

PROPS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
METHOD = "streamingtom"
CTR, SALIENCY = "streamingtom_ctr", "streamingtom_saliency"
OTHER_KINDS = {  # the OQM kinds of the same folder are the kv_cache strategy's (another module's tests)
    "streamingtom_oqm_quant",
    "streamingtom_oqm_retrieval",
    "streamingtom_oqm_stream",
    "streamingtom_oqm_retrieval_attn",
}


# ------------------------------------------------------------------ fixtures
def _tol(case: Case, key: str) -> dict[str, float]:
    spec = need(case.meta, "tolerances", key, where=case.name)
    if isinstance(spec, dict):
        spec = {k: v for k, v in spec.items() if k != "note"}
    try:
        return parse_tolerance(spec)
    except ValueError as exc:
        pytest.fail(f"{case.name}: tolerance {key}: {exc}")


def _grid(n: int) -> tuple[int, int]:
    side = math.isqrt(n)
    return (side, side) if side * side == n else (1, n)


def _alternatives(case: Case, c: int, f: int) -> list[list[int]]:
    alts = [a for a in case.meta.get("acceptable_alternatives", []) if a["chunk"] == c and a["frame"] == f]
    return [list(p) for a in alts for p in a["acceptable_kept_positions"]]


def _check_ctr(case: Case) -> dict[str, float]:
    t = case.tensors()
    p = need(case.meta, "params", where=case.name)
    strategy = StreamingTomCtr(
        tokens_per_frame=need(p, "retain_tokens", where=case.name),
        similarity_threshold=need(p, "similarity_threshold", where=case.name),
        k=need(p, "k", where=case.name),
        beta=need(p, "beta", where=case.name),
    )
    check = Checker(case, t, _tol(case, "out"))
    n = int(need(p, "tokens_per_frame", where=case.name))
    state, first = strategy.new_state(), 0
    for c, frames in enumerate(need(p, "frames_per_chunk", where=case.name)):
        x, scores = t[f"chunk{c}.features"], t[f"chunk{c}.scores"]
        assert tuple(x.shape[:2]) == (frames, n) and tuple(scores.shape) == (frames, n), case.name
        check.used(f"chunk{c}.features", f"chunk{c}.scores")
        noise = []
        for f in range(frames):
            key = f"chunk{c}.frame{f}.dpc_noise"

            def stored(m: int, key: str = key) -> torch.Tensor:
                assert key in t, f"{case.name}: DPC ran with {m} static tokens but the case stores no {key}"
                assert t[key].shape == (m,), f"{case.name}: {key} has {t[key].shape}, DPC drew {m}"
                check.used(key)
                return t[key]

            noise.append(stored)
        tok = VisualTokens.from_frames(x, _grid(n), first_frame=first)
        plan = strategy.plan(tok, scores, state, noise=noise)
        out = strategy.carve(tok, plan)
        check.exact(f"chunk{c}.static_mask", plan.static_mask)
        check.exact(f"chunk{c}.static_budget", plan.static_budgets)
        check.exact(f"chunk{c}.from_static", plan.from_static)
        want_pos = t[f"chunk{c}.kept_positions"].clone()
        got_pos = plan.kept_positions
        want_out = t[f"chunk{c}.out"].clone().view(frames, -1, x.shape[-1])
        for f in range(frames):
            if not torch.equal(got_pos[f], want_pos[f]):
                assert got_pos[f].tolist() in _alternatives(case, c, f), (
                    f"{case.name}: chunk {c} frame {f} kept"
                )
                moved = got_pos[f] != want_pos[f]  # a tied dynamic pick: its row is a copy of the input
                assert not bool(plan.from_static[f][moved].any())
                want_out[f][moved] = x[f, got_pos[f][moved]]
                want_pos[f] = got_pos[f]
        assert torch.equal(got_pos, want_pos)
        check.used(f"chunk{c}.kept_positions")
        # the carrier: G rows per frame at the kept positions, in raster order, with the reference's features
        assert torch.equal(out.counts(), torch.full((frames,), strategy.planned_count(n, 1)))
        assert torch.equal(out.local_index().view(frames, -1), got_pos)
        expected = {f"chunk{c}.out": want_out.reshape(-1, x.shape[-1])}
        Checker(case, expected, check.tol).close(f"chunk{c}.out", out.tokens)
        check.errors[f"chunk{c}.out"] = (out.tokens - expected[f"chunk{c}.out"]).abs().max().item()
        check.used(f"chunk{c}.out")
        strategy.commit(state, plan)
        first += frames
    check.exact("final.last_frame_tokens", state.last_frame[None])
    return check.done()


def _saliency_layer(t: dict[str, torch.Tensor], heads: int) -> SiglipEncoderLayer:
    """A SigLIP layer holding the case's projections, layer_norm1 an identity (the case's states are its output)."""
    width = t["q_proj.weight"].shape[1]
    cfg = SiglipVisionConfig(hidden_size=width, num_attention_heads=heads, intermediate_size=4 * width)
    cfg._attn_implementation = "sdpa"
    layer = SiglipEncoderLayer(cfg).eval()
    layer.layer_norm1 = nn.Identity()
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        proj = getattr(layer.self_attn, name)
        proj.weight.data.copy_(t[f"{name}.weight"])
        proj.bias.data.copy_(t[f"{name}.bias"])
    return layer


def _pooling_target(side: int) -> LlavaOnevisionTarget:
    """The LLaVA-OV target's geometry for a ``side``×``side`` ViT grid (its maps read only the config)."""
    vision = SimpleNamespace(image_size=side * 14, patch_size=14)
    return LlavaOnevisionTarget(SimpleNamespace(config=SimpleNamespace(vision_config=vision)))


@torch.no_grad()
def _check_saliency(case: Case) -> dict[str, float]:
    t = case.tensors()
    p = need(case.meta, "params", where=case.name)
    h = t["hidden_states"]
    side, heads = need(p, "grid", where=case.name)[0], int(need(p, "num_heads", where=case.name))
    assert h.shape[1] == side * side, case.name
    check = Checker(case, t, {"atol": 0.0, "rtol": 0.0})
    check.used(
        "hidden_states", *[f"{n}_proj.{w}" for n in ("q", "k", "v", "out") for w in ("weight", "bias")]
    )
    check.used("features_grid")
    layer = _saliency_layer(t, heads)
    adapter = SiglipBlockAdapter(layer)
    probe = LayerProbe(h, adapter, num_layers=1)
    strategy = StreamingTomCtr(layer=-1)
    check.close("importance", strategy.vit_saliency(probe, side * side), **_tol(case, "importance"))
    check.close("attn_output", layer.self_attn(h)[0], **_tol(case, "attn_output"))
    target = _pooling_target(side)
    pooled_side = need(p, "pooled_grid", where=case.name)[0]
    assert pooled_side == math.ceil(side / 2), case.name
    tok = VisualTokens.from_frames(target.prefill_grid_map()(t["features_grid"]), (pooled_side, pooled_side))
    chunk = ChunkInfo(0, 0, h.shape[0], probes={0: probe}, to_prefill_grid=target.prefill_grid_map())
    check.close("pooled_scores", strategy.saliency(tok, chunk), **_tol(case, "pooled_scores"))
    check.close("pooled_features", tok.dense(), **_tol(case, "pooled_features"))
    return check.done()


CHECKS = {CTR: _check_ctr, SALIENCY: _check_saliency}


@pytest.mark.parametrize("case", params(METHOD, set(CHECKS)))
def test_streamingtom_ctr_fixture(case: Case) -> None:
    errors = CHECKS[case.kind](case)
    print(f"{case.name} max abs errors: " + ", ".join(f"{k}={v:.2e}" for k, v in errors.items()))


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in collect(METHOD)] or [None])
def test_every_streamingtom_case_has_a_known_kind(case: Case | None) -> None:
    """A case of no known kind fails here (the OQM kinds are read by the kv_cache memory's tests)."""
    if case is not None:
        assert case.kind in set(CHECKS) | OTHER_KINDS, f"{case.name}: unknown kind {case.kind!r}"


def test_an_unreadable_ctr_case_fails(tmp_path) -> None:
    (tmp_path / "broken.json").write_text(json.dumps({"kind": CTR, "params": {"retain_tokens": 5}}))
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "broken.safetensors"))
    with pytest.raises(pytest.fail.Exception, match="sidecar lacks"):
        _check_ctr(Case(tmp_path / "broken.json", json.loads((tmp_path / "broken.json").read_text())))


# ------------------------------------------------------------- test inputs
def _adapter(width: int, heads: int = 2, seed: int = 0) -> SiglipBlockAdapter:
    cfg = SiglipVisionConfig(hidden_size=width, num_attention_heads=heads, intermediate_size=2 * width)
    cfg._attn_implementation = "sdpa"
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return SiglipBlockAdapter(SiglipEncoderLayer(cfg).eval())


def _infos(stream: list[VisualTokens], seed: int = 0) -> list[ChunkInfo]:
    """Chunk infos whose probe is a random ViT layer on the carrier's own grid."""
    adapter = _adapter(4, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for c, tok in enumerate(stream):
        hidden = torch.randn(tok.num_frames, tok.tokens_per_frame_in, 4, generator=gen)
        out.append(ChunkInfo(c, tok.first_frame, tok.num_frames, probes={0: LayerProbe(hidden, adapter, 1)}))
    return out


# ---------------------------------------------------------------- properties
@PROPS
@given(stream=streams(), keep=st.floats(0.01, 1.0), data=st.data())
def test_conformance_and_fixed_count(stream: list[VisualTokens], keep: float, data: st.DataObject) -> None:
    n = stream[0].tokens_per_frame_in
    g = max(1, min(n, round(keep * n)))
    strategy = StreamingTomCtr(
        tokens_per_frame=g,
        similarity_threshold=data.draw(st.sampled_from([0.0, 0.5, 0.9, 1.0])),
        k=data.draw(st.integers(1, 8)),
        beta=data.draw(st.sampled_from([0.0, 0.6, 1.0])),
        dpc_delta=data.draw(st.sampled_from(["lower", "higher"])),
        noise=data.draw(st.sampled_from(["reference", "none"])),
    )
    outs = check_token_strategy(strategy, stream, chunk_infos=_infos(stream))
    for tok, out in zip(stream, outs, strict=True):
        assert out.counts().tolist() == [g] * tok.num_frames
        # every merged row is beta * centre + (1 - beta) * mean of the other members
        for row in torch.nonzero(out.sizes > 1).squeeze(1).tolist():
            members = torch.nonzero(out.assign == row).squeeze(1)
            centre = out.source[row]
            others = members[members != centre]
            b = strategy.params.beta
            want = b * tok.tokens[centre] + (1 - b) * tok.tokens[others].mean(0)
            torch.testing.assert_close(out.tokens[row], want, atol=1e-5, rtol=1e-4)
            assert bool((tok.frame[members] == out.frame[row]).all())


@PROPS
@given(stream=streams())
def test_keeping_every_token_is_the_identity(stream: list[VisualTokens]) -> None:
    strategy = StreamingTomCtr(tokens_per_frame=stream[0].tokens_per_frame_in)
    for inp, out in zip(
        stream, check_token_strategy(strategy, stream, chunk_infos=_infos(stream)), strict=True
    ):
        for field in ("tokens", "frame", "pos", "source", "sizes", "assign"):
            assert torch.equal(getattr(out, field), getattr(inp, field)), field


@PROPS
@given(stream=streams(chunks=4), g=st.integers(1, 25), noise=st.sampled_from(["reference", "none"]))
def test_chunking_does_not_change_the_stream(stream: list[VisualTokens], g: int, noise: str) -> None:
    """The streaming rule: a chunk's first frame is compared with the previous chunk's last raw frame,
    and the noise follows the stream frame, so chunks of any size give the one-shot result."""
    n = stream[0].tokens_per_frame_in
    strategy = StreamingTomCtr(tokens_per_frame=min(g, n), noise=noise)
    infos = _infos(stream)
    chunked = [
        strategy.apply(t, s, c) for s in [strategy.new_state()] for t, c in zip(stream, infos, strict=True)
    ]
    whole = VisualTokens.from_frames(
        torch.cat([t.tokens for t in stream]).view(-1, n, stream[0].dim), stream[0].grid
    )
    hidden = torch.cat([c.probes[0].hidden for c in infos])
    chunk = ChunkInfo(0, 0, whole.num_frames, probes={0: LayerProbe(hidden, infos[0].probes[0].adapter, 1)})
    one = strategy.apply(whole, strategy.new_state(), chunk)
    assert torch.equal(torch.cat([o.tokens for o in chunked]), one.tokens)
    assert torch.equal(torch.cat([o.frame for o in chunked]), one.frame)
    assert torch.equal(torch.cat([o.pos for o in chunked]), one.pos)
    assert torch.equal(torch.cat([o.sizes for o in chunked]), one.sizes)


@PROPS
@given(a=streams(), b=streams())
def test_streams_do_not_share_state_and_plan_is_pure(a: list[VisualTokens], b: list[VisualTokens]) -> None:
    strategy = StreamingTomCtr(tokens_per_frame=1)
    ia, ib = _infos(a, 1), _infos(b, 2)
    alone = check_token_strategy(strategy, a, chunk_infos=ia)
    sa, sb = strategy.new_state(), strategy.new_state()
    for c, (ta, tb) in enumerate(zip(a, b, strict=True)):
        sal = strategy.saliency(ta, ia[c])
        strategy.plan(ta, sal, sa)  # planned and dropped: the state stays
        oa = strategy.apply(ta, sa, ia[c])
        strategy.apply(tb, sb, ib[c])
        assert torch.equal(oa.tokens, alone[c].tokens) and torch.equal(oa.source, alone[c].source)
    assert torch.equal(sa.last_frame, a[-1].tokens[-a[-1].tokens_per_frame_in :])


def test_carried_normalised_rows_match_a_fresh_normalisation() -> None:
    """The state carries the last frame's normalised rows; a state holding only the raw frame (or
    a frame replaced by hand) normalises it again and plans the same chunk bit for bit."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(6, 36, 8, generator=gen)
    x[1:] = x[:-1] + 0.3 * torch.randn(5, 36, 8, generator=gen)
    sal = torch.rand(6, 36, generator=gen)
    strategy = StreamingTomCtr(tokens_per_frame=9)
    state = strategy.new_state()
    for c in range(3):
        tok = VisualTokens.from_frames(x[2 * c : 2 * c + 2], (6, 6), first_frame=2 * c)
        plan = strategy.plan(tok, sal[2 * c : 2 * c + 2], state)
        fresh = strategy.plan(tok, sal[2 * c : 2 * c + 2], StreamingTomCtrState(state.last_frame))
        stale = StreamingTomCtrState(
            state.last_frame, None if state.normed is None else (x[0], state.normed[1])
        )
        for other in (fresh, strategy.plan(tok, sal[2 * c : 2 * c + 2], stale)):
            assert torch.equal(other.static_mask, plan.static_mask)
            assert all(torch.equal(a.rows, b.rows) for a, b in zip(other.frames, plan.frames, strict=True))
        strategy.commit(state, plan)
        assert state.normed[0] is state.last_frame
        assert torch.equal(state.normed[1], torch.nn.functional.normalize(x[2 * c + 1], dim=-1))


def test_repeated_frame_is_all_static_and_a_scene_cut_all_dynamic() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 36, 8, generator=gen)
    x[1] = x[0]  # repeated: every token static, only DPC centres
    x[2] = -x[1]  # a cut: cosine -1 everywhere, only saliency picks
    sal = torch.rand(3, 36, generator=gen)
    strategy = StreamingTomCtr(tokens_per_frame=9)
    tok = VisualTokens.from_frames(x, (6, 6))
    plan = strategy.plan(tok, sal, strategy.new_state())
    assert plan.static_mask.sum(1).tolist() == [0, 36, 0]
    assert plan.from_static.tolist()[1] == [True] * 9 and not bool(plan.from_static[[0, 2]].any())
    assert plan.kept_positions[2].tolist() == sorted(torch.topk(sal[2], 9).indices.tolist())
    out = strategy.carve(tok, plan)
    assert out.sizes[9:18].sum() == 36 and torch.equal(out.sizes[:9], torch.ones(9))


def test_textbook_dpc_and_noise_options_change_only_what_they_say() -> None:
    gen = torch.Generator().manual_seed(4)
    z = torch.randn(40, 6, generator=gen)
    lower, _ = dpc_centres(z, 8, 7, None, "lower")
    higher, _ = dpc_centres(z, 8, 7, None, "higher")
    assert not torch.equal(lower, higher)
    noisy, _ = dpc_centres(z, 8, 7, torch.rand(40, generator=gen), "lower")
    assert torch.equal(noisy, lower)  # 1e-6 noise moves only near-ties
    strategy = StreamingTomCtr(seed=3)
    assert torch.equal(strategy.frame_noise(5)(4), strategy.frame_noise(5)(4))
    assert not torch.equal(strategy.frame_noise(5)(4), strategy.frame_noise(6)(4))
    assert StreamingTomCtr(noise="none").frame_noise(5) is None


def test_zero_tokens_are_dynamic_and_threshold_is_strict() -> None:
    x = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 0.0]]])
    assert static_masks(x, None, 0.9).tolist() == [[False, False], [True, False]]
    assert static_masks(x, None, 1.0).tolist() == [[False, False], [False, False]]


# ------------------------------------------------------------ on the models
@torch.no_grad()
def test_llava_onevision_wiring_is_the_kernel_on_pooled_saliency(tiny_llava_ov) -> None:
    """Probe of the last layer → mean attention received on the 8×8 grid → the target's bilinear
    pooling → CTR on the pooled, projected tokens; the state carries across chunks."""
    frames = random_frames(4, seed=5)
    step = {"strategy": "streamingtom_ctr", "tokens_per_frame": 4}
    pipe = Pipeline.from_dict({"stream": {"frames_per_chunk": 2}, "stages": {"pre_prefill": [step]}})
    with pipe.apply(tiny_llava_ov) as bound:
        stream = bound.stream()
        got = [stream.encode_only(frames[:2]), stream.encode_only(frames[2:])]
        target = bound.target
    inner = tiny_llava_ov.model
    out = inner.vision_tower(target.preprocess(frames), output_hidden_states=True)
    adapter = SiglipBlockAdapter(inner.vision_tower.encoder.layers[-1])
    probe = LayerProbe(out.hidden_states[-2], adapter, len(inner.vision_tower.encoder.layers))
    pooled = inner.apply_pooling(inner.multi_modal_projector(out.hidden_states[-1]))
    strategy = StreamingTomCtr(tokens_per_frame=4)
    sal = target.prefill_grid_map()(strategy.vit_saliency(probe, 64)[..., None])[..., 0]
    state = strategy.new_state()
    for c in range(2):
        tok = VisualTokens.from_frames(pooled[2 * c : 2 * c + 2], (4, 4), first_frame=2 * c)
        want = strategy.carve(tok, plan := strategy.plan(tok, sal[2 * c : 2 * c + 2], state))
        strategy.commit(state, plan)
        assert torch.equal(got[c].source, want.source) and torch.equal(got[c].sizes, want.sizes)
        torch.testing.assert_close(got[c].tokens, want.tokens, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(target_index=st.integers(0, 1), g=st.integers(1, 16), fpc=st.sampled_from([2, 4]))
def test_qwen_kept_tokens_keep_their_unpruned_positions(target_index: int, g: int, fpc: int) -> None:
    """On Qwen2-VL / Qwen2.5-VL every kept (or merged) row sits at the stock model's (t, h, w)
    position of its source in the unpruned one-shot input."""
    model = tiny(TARGETS[target_index])
    frames = FRAMES[:4]
    prefix = torch.tensor([11, 12, 13, 14, 15])
    stages = {"pre_prefill": [{"strategy": "streamingtom_ctr", "tokens_per_frame": g}]}
    with pipeline(stages, fpc=fpc).apply(model) as bound:
        seen = []
        original = bound.target.visual_positions

        def spy(state, tokens):
            pos = original(state, tokens)
            seen.append((tokens.source.clone(), tokens.frame.clone(), pos.clone()))
            return pos

        bound.target.visual_positions = spy
        s = bound.stream()
        s.prefill_ids(prefix)
        s.add_frames(frames)
        full = plain_positions(model, bound.target, frames, fpc)
    start = len(prefix)
    for source, frame, pos in seen:
        n = (fpc // 2) * 16
        assert torch.equal(
            torch.bincount(frame - frame.min(), minlength=fpc // 2), torch.full((fpc // 2,), g)
        )
        assert torch.equal(pos[:, 0, 1:-1], full[:, start + 1 + source])
        start += n + 2


# --------------------------------------------------------------- parameters
@pytest.mark.parametrize(
    "kwargs",
    [
        {"tokens_per_frame": 0},
        {"similarity_threshold": 1.5},
        {"similarity_threshold": -0.1},
        {"k": 0},
        {"beta": 1.2},
        {"dpc_delta": "nearest"},
        {"noise": "global"},
        {"seed": -1},
        {"saliency_source": "eager"},
        {"retain_tokens": 50},
    ],
)
def test_bad_params_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValidationError, match=next(iter(kwargs))):
        StreamingTomCtr(**kwargs)


def test_build_time_refusals_name_the_field(tiny_llava_ov) -> None:
    def pipe(**step):
        step = {"strategy": "streamingtom_ctr", **step}
        return Pipeline.from_dict({"stages": {"pre_prefill": [step]}})

    with pytest.raises(
        BudgetError, match=r"streamingtom_ctr\.tokens_per_frame = 17 .* 16 tokens .* at most 16"
    ):
        pipe(tokens_per_frame=17).bind(tiny_llava_ov)
    with pytest.raises(CompatibilityError, match=r"streamingtom_ctr\.layer = 5 .* 2 encoder layers"):
        pipe(tokens_per_frame=4, layer=5).bind(tiny_llava_ov)
    info = StageInfo(Stage.PRE_PREFILL, 196, 8, (14, 14))
    assert StreamingTomCtr.conformance_params(info) == {"tokens_per_frame": 50}


def test_cut_carrier_and_missing_probe_are_clear_errors() -> None:
    tok = VisualTokens.from_frames(torch.randn(2, 4, 3), (2, 2))
    strategy = StreamingTomCtr(tokens_per_frame=2)
    with pytest.raises(ValueError, match="needs every token of each frame .* first in pre_prefill"):
        strategy.plan(tok.take(torch.tensor([0, 1, 2, 5])), torch.zeros(2, 4), strategy.new_state())
    with pytest.raises(RuntimeError, match="no encoder-layer probe"):
        strategy.apply(tok, strategy.new_state(), ChunkInfo(0, 0, 2))
    with pytest.raises(TypeError, match="stateful"):
        strategy.plan(tok, torch.zeros(2, 4), None)
