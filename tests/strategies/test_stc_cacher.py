"""STC-Cacher: reference fixtures through the real layer patch, docs/design.md §8 properties,
parameter checks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from torch import Tensor
from transformers import SiglipVisionConfig, SiglipVisionModel

from tests.support.fixture_cases import Case, params, parse_tolerance
from tokencompress.api.strategy import BlockCall, ChunkInfo
from tokencompress.patching.block_routing import BlockPatch
from tokencompress.strategies.stc_cacher import (
    CacherState,
    StcCacher,
    StcCacherParams,
    layer_macs,
    n_update,
    select_updates,
)
from tokencompress.targets.llava.siglip_block import SiglipBlockAdapter

CONFIG_KEYS = (
    "hidden_size",
    "num_attention_heads",
    "num_hidden_layers",
    "intermediate_size",
    "image_size",
    "patch_size",
    "num_channels",
    "hidden_act",
    "layer_norm_eps",
    "vision_use_head",
)
PROPERTY_SETTINGS = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def build_siglip(model_params: dict, weights: dict[str, Tensor]) -> SiglipVisionModel:
    config = SiglipVisionConfig(**{k: model_params[k] for k in CONFIG_KEYS})
    model = SiglipVisionModel._from_config(
        config, attn_implementation=model_params["plain_attn_implementation"]
    )
    result = model.load_state_dict({k: v.float() for k, v in weights.items()}, strict=False)
    assert not result.unexpected_keys
    assert set(result.missing_keys) <= {"embeddings.position_ids"}
    return model.float().eval()


def patch_for(model: SiglipVisionModel, cacher: StcCacher) -> BlockPatch:
    layers = model.encoder.layers
    return BlockPatch(layers, [SiglipBlockAdapter(layer) for layer in layers], [cacher])


def encode(
    model: SiglipVisionModel,
    patch: BlockPatch,
    cacher: StcCacher,
    state: CacherState,
    frames: Tensor,
    info: ChunkInfo,
) -> Tensor:
    """One chunk through the patched model: hidden states ``[L+1, F, T, C]``."""
    cacher.start_chunk(state, info)
    with patch.chunk([state], info):
        out = model(pixel_values=frames, output_hidden_states=True)
    return torch.stack(out.hidden_states)


def plain(model: SiglipVisionModel, frames: Tensor) -> Tensor:
    return torch.stack(model(pixel_values=frames, output_hidden_states=True).hidden_states)


def chunks(frames: Tensor, per_chunk: int) -> list[tuple[ChunkInfo, Tensor]]:
    return [
        (ChunkInfo(c, start, len(frames[start : start + per_chunk])), frames[start : start + per_chunk])
        for c, start in enumerate(range(0, len(frames), per_chunk))
    ]


# --------------------------------------------------------------------------------------------- fixtures


@pytest.mark.parametrize("case", params("stc", {"stc_cacher"}))
@torch.no_grad()
def test_stc_cacher_fixture(case: Case) -> None:
    p, tol = case.meta["params"], case.meta["tolerances"]
    model_meta, weights = case.companion("model_file")
    frames = case.companion("frames_file")[1]["pixel_values"].float().contiguous()
    plain_meta, plain_out = case.companion("plain_file")
    model = build_siglip(model_meta["params"], weights)
    n_layers, n_frames, tokens = p["num_layers"], p["num_frames"], p["tokens_per_frame"]
    assert len(model.encoder.layers) == n_layers and len(frames) == n_frames
    n = n_update(tokens, p["update_token_ratio"])
    assert n == p["n_update_per_frame_per_layer"]

    cacher = StcCacher(update_token_ratio=p["update_token_ratio"], cache_interval=p["cache_interval"])
    state = cacher.new_state()
    state.trace = []
    hidden, chunk_idx, is_ref, starts = [], [], [], []
    with patch_for(model, cacher) as patch:
        for info, chunk in chunks(frames, p["frames_per_chunk"]):
            hidden.append(encode(model, patch, cacher, state, chunk, info))
            chunk_idx += [info.index] * info.num_frames
            is_ref += [state.is_reference] * info.num_frames
            starts.append(info.first_frame)
    assert len(starts) == p["num_chunks"]
    hidden_all = torch.cat(hidden, dim=1)  # [L+1, N, T, C]
    last_hidden = model.post_layernorm(hidden_all[-1])

    indices = torch.full((n_layers, n_frames, n), -1, dtype=torch.long)
    similarity = torch.zeros(n_layers, n_frames, tokens)
    for rec in state.trace:
        if not rec.reference:
            rows = slice(starts[rec.chunk], starts[rec.chunk] + rec.update_indices.shape[0])
            indices[rec.layer, rows] = rec.update_indices
            similarity[rec.layer, rows] = rec.key_cosine_similarity

    want = case.tensors()
    mine = {
        "hidden_states": hidden_all,
        "encoder_output": hidden_all[-1],
        "last_hidden_state": last_hidden,
        "key_cosine_similarity": similarity,
    }
    errors = {}
    for key, value in want.items():
        if key in ("chunk_idx", "frame_is_reference"):
            got = torch.tensor(chunk_idx if key == "chunk_idx" else is_ref)
            assert torch.equal(got, value), key
        elif key == "update_indices":
            assert tol[key] == "exact as sets"
            assert value.shape == indices.shape
            for layer in range(n_layers):
                for f in range(n_frames):
                    expected, got = value[layer, f].tolist(), indices[layer, f].tolist()
                    assert set(got) == set(expected), (layer, f, sorted(got), sorted(expected))
        else:
            assert key in mine, f"fixture key {key!r} is not checked"
            errors[key] = (mine[key] - value).abs().max().item()
            assert errors[key] <= case.tolerance(key)["atol"], (key, errors[key])
    assert "encoder_output" in want or "hidden_states" in want

    plain_tol = plain_meta["tolerances"]
    ref = torch.tensor(is_ref)
    err = (hidden_all[-1][ref] - plain_out["encoder_output"][ref]).abs().max().item()
    assert err <= parse_tolerance(plain_tol.get("encoder_output", plain_tol["all"]))["atol"]
    print(f"{case.name}: max abs error {errors}, reference frames vs plain {err:.3g}")


# ------------------------------------------------------------------------------------------- properties


@pytest.fixture(scope="module")
def tiny() -> SiglipVisionModel:
    """A seeded 2-layer SigLIP, T = 16 tokens of width 32, with random LayerNorm parameters too."""
    torch.manual_seed(0)
    config = SiglipVisionConfig(
        hidden_size=32,
        num_attention_heads=2,
        num_hidden_layers=2,
        intermediate_size=64,
        image_size=28,
        patch_size=7,
        vision_use_head=False,
    )
    model = SiglipVisionModel._from_config(config, attn_implementation="sdpa").eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layer_norm" in name:
                param.add_(0.2 * torch.randn_like(param))
    return model


def video(seed: int, n_frames: int) -> Tensor:
    """Frames ``[N, 3, 28, 28]`` that drift slowly, so selections are data-dependent."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(1, 3, 28, 28, generator=gen)
    return (base + 0.3 * torch.randn(n_frames, 3, 28, 28, generator=gen).cumsum(0)).contiguous()


def run_stream(
    model: SiglipVisionModel, cacher: StcCacher, frames: Tensor, per_chunk: int
) -> list[tuple[bool, Tensor]]:
    """A fresh stream through a fresh patch: (is_reference, hidden states ``[L+1, F, T, C]``) per chunk."""
    state = cacher.new_state()
    out = []
    with patch_for(model, cacher) as patch:
        for info, chunk in chunks(frames, per_chunk):
            hidden = encode(model, patch, cacher, state, chunk, info)
            out.append((state.is_reference, hidden))
    return out


stream_shapes = dict(
    seed=st.integers(0, 2**16),
    n_frames=st.integers(1, 6),
    per_chunk=st.integers(1, 3),
    interval=st.integers(1, 3),
)


@PROPERTY_SETTINGS
@given(
    seed=st.integers(0, 2**16),
    n_frames=st.integers(2, 6),
    per_chunk=st.integers(1, 2),
    interval=st.integers(2, 3),
)  # at least one non-reference chunk in every example
@torch.no_grad()
def test_ratio_one_equals_plain_model(tiny, seed, n_frames, per_chunk, interval) -> None:
    frames = video(seed, n_frames)
    cacher = StcCacher(update_token_ratio=1.0, cache_interval=interval)
    for (info, chunk), (_, got) in zip(
        chunks(frames, per_chunk), run_stream(tiny, cacher, frames, per_chunk), strict=True
    ):
        assert info.num_frames == got.shape[1]
        torch.testing.assert_close(got, plain(tiny, chunk), atol=1e-5, rtol=0)


@PROPERTY_SETTINGS
@given(ratio=st.floats(0.01, 1.0), fast=st.booleans(), **stream_shapes)
@torch.no_grad()
def test_reference_chunks_equal_plain_model_and_shapes_hold(
    tiny, ratio, fast, seed, n_frames, per_chunk, interval
) -> None:
    """Stock reference layers are the plain tower bit for bit; the fast ones to float32 rounding."""
    frames = video(seed, n_frames)
    cacher = StcCacher(update_token_ratio=ratio, cache_interval=interval, fast_reference=fast)
    results = run_stream(tiny, cacher, frames, per_chunk)
    for (c, (_, chunk)), (is_ref, got) in zip(enumerate(chunks(frames, per_chunk)), results, strict=True):
        expected = plain(tiny, chunk)
        assert got.shape == expected.shape
        assert is_ref == (c % interval == 0)
        if is_ref and not fast:
            assert torch.equal(got, expected)
        elif is_ref:
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@torch.no_grad()
def test_fast_reference_layers_run_the_row_kernels_at_real_width(monkeypatch) -> None:
    """One SigLIP-so400m-width layer (729 tokens of 1152): the fast reference layer goes through
    the packed adapter's fused Q/K/V and stays within float32 rounding of the stock layer."""
    from tokencompress.targets.llava import siglip_block

    torch.manual_seed(0)
    config = SiglipVisionConfig(
        hidden_size=1152,
        intermediate_size=4304,
        num_attention_heads=16,
        num_hidden_layers=1,
        image_size=378,
        patch_size=14,
        vision_use_head=False,
    )
    model = SiglipVisionModel._from_config(config, attn_implementation="sdpa").eval()
    frame = torch.rand(1, 3, 378, 378)
    calls = []
    packed_qkv = siglip_block._PackedSiglipBlockAdapter.qkv
    monkeypatch.setattr(
        siglip_block._PackedSiglipBlockAdapter,
        "qkv",
        lambda self, x: calls.append(x.shape) or packed_qkv(self, x),
    )
    outs = {}
    for fast in (False, True):
        cacher = StcCacher(update_token_ratio=0.25, cache_interval=2, fast_reference=fast)
        ((is_ref, hidden),) = run_stream(model, cacher, frame, 1)
        assert is_ref
        outs[fast] = hidden
    assert calls == [torch.Size([1, 729, 1152])]  # the fast run only, one layer
    assert torch.equal(outs[False], plain(model, frame))
    torch.testing.assert_close(outs[True], outs[False], atol=1e-4, rtol=1e-5)


@PROPERTY_SETTINGS
@given(
    ratio=st.floats(0.01, 1.0),
    seed=st.integers(0, 2**16),
    n_frames=st.integers(2, 8),
    per_chunk=st.integers(1, 2),
)
@torch.no_grad()
def test_streams_never_see_each_other(tiny, ratio, seed, n_frames, per_chunk) -> None:
    cacher = StcCacher(update_token_ratio=ratio, cache_interval=2)
    a, b = video(seed, n_frames), video(seed + 1, n_frames)
    alone_a, alone_b = run_stream(tiny, cacher, a, per_chunk), run_stream(tiny, cacher, b, per_chunk)
    state_a, state_b = cacher.new_state(), cacher.new_state()
    with patch_for(tiny, cacher) as patch:
        for (ia, ca), (ib, cb), (_, ea), (_, eb) in zip(
            chunks(a, per_chunk), chunks(b, per_chunk), alone_a, alone_b, strict=True
        ):
            assert torch.equal(encode(tiny, patch, cacher, state_a, ca, ia), ea)
            assert torch.equal(encode(tiny, patch, cacher, state_b, cb, ib), eb)


@PROPERTY_SETTINGS
@given(
    ratio=st.floats(0.01, 1.0), frames=st.integers(1, 4), tokens=st.integers(1, 20), seed=st.integers(0, 99)
)
@torch.no_grad()
def test_block_output_shape_equals_input_shape(tiny, ratio, frames, tokens, seed) -> None:
    gen = torch.Generator().manual_seed(seed)
    cacher = StcCacher(update_token_ratio=ratio)
    state = cacher.new_state()
    adapter = SiglipBlockAdapter(tiny.encoder.layers[0])
    for c in range(3):
        info = ChunkInfo(c, c * frames, frames)
        cacher.start_chunk(state, info)
        hidden = torch.randn(frames, tokens, 32, generator=gen)
        out = cacher.block_forward(
            BlockCall(adapter, 0, 1, state, info), hidden, lambda h: pytest.fail("unused")
        )
        assert out.shape == hidden.shape


@torch.no_grad()
def test_leaving_the_patch_restores_the_model(tiny) -> None:
    frames = video(3, 4)
    before = plain(tiny, frames)
    cacher = StcCacher(update_token_ratio=0.25)
    run_stream(tiny, cacher, frames, 1)
    assert all("forward" not in layer.__dict__ for layer in tiny.encoder.layers)
    assert torch.equal(plain(tiny, frames), before)


@torch.no_grad()
def test_patch_outside_a_chunk_is_the_stock_layer(tiny) -> None:
    frames = video(4, 3)
    before = plain(tiny, frames)
    cacher = StcCacher(update_token_ratio=0.25)
    state = cacher.new_state()
    with patch_for(tiny, cacher) as patch:
        encode(tiny, patch, cacher, state, frames[:1], ChunkInfo(0, 0, 1))
        assert all("forward" in layer.__dict__ for layer in tiny.encoder.layers)
        assert torch.equal(plain(tiny, frames), before)


@torch.no_grad()
def test_non_reference_chunks_never_write_the_cache(tiny) -> None:
    frames = video(5, 3)
    cacher = StcCacher(update_token_ratio=0.25, cache_interval=3)
    state = cacher.new_state()
    with patch_for(tiny, cacher) as patch:
        (i0, c0), (i1, c1), (i2, c2) = chunks(frames, 1)
        encode(tiny, patch, cacher, state, c0, i0)
        cached = {layer: tuple(t.clone() for t in refs) for layer, refs in state.refs.items()}
        encode(tiny, patch, cacher, state, c1, i1)
        encode(tiny, patch, cacher, state, c2, i2)
    assert not state.is_reference and state.refs.keys() == cached.keys()
    for layer, refs in cached.items():
        assert all(torch.equal(a, b) for a, b in zip(refs, state.refs[layer], strict=True))


@torch.no_grad()
def test_missing_reference_falls_back_to_a_full_layer(tiny) -> None:
    frames = video(6, 2)
    cacher = StcCacher(update_token_ratio=0.25)
    state = CacherState(chunks_seen=1)  # counter says "non-reference", but nothing is cached
    with patch_for(tiny, cacher) as patch:
        got = encode(tiny, patch, cacher, state, frames, ChunkInfo(1, 0, 2))
    assert not state.is_reference
    assert torch.equal(got, plain(tiny, frames))
    assert sorted(state.refs) == [0, 1]


# ------------------------------------------------------------------------------------------ arithmetic


def test_n_update_floors_and_clamps() -> None:
    assert n_update(729, 0.25) == 182
    assert n_update(36, 0.1) == 3
    assert n_update(36, 0.01) == 1
    assert n_update(36, 1.0) == 36


def test_selection_breaks_ties_towards_lower_index() -> None:
    sim = torch.tensor([[0.5, 0.1, 0.5, 0.1, 0.5, 0.9], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    assert select_updates(sim, 3).tolist() == [[1, 3, 0], [0, 1, 2]]


def test_layer_macs_match_the_spec_table() -> None:
    macs = layer_macs(729, 1152, 4304, n_update(729, 0.25))
    assert round(macs.full / 1e6, 2) == 12323.34
    assert round(macs.non_reference / 1e6, 2) == 3802.54
    assert round(macs.non_reference_as_coded / 1e6, 2) == 4769.99
    assert StcCacher().layer_macs(729, 1152, 4304) == macs


# ------------------------------------------------------------------------------------------ parameters


@pytest.mark.parametrize(
    "kwargs",
    [{"update_token_ratio": 0}, {"update_token_ratio": 1.5}, {"cache_interval": 0}, {"update_ratio": 0.3}],
)
def test_params_reject_bad_values(kwargs: dict) -> None:
    with pytest.raises(ValidationError):
        StcCacherParams(**kwargs)
    with pytest.raises(ValidationError):
        StcCacher(**kwargs)


def test_params_defaults_and_metadata() -> None:
    cacher = StcCacher()
    assert (cacher.params.update_token_ratio, cacher.params.cache_interval) == (0.25, 2)
    assert cacher.name == "stc_cacher" and cacher.stateful and not cacher.changes_count
    assert cacher.planned_count(729, 3) == 729 * 3


@torch.no_grad()
def test_copy_state_shares_tensors_and_survives_later_chunks(tiny) -> None:
    """The transaction's copy costs no tensor copy, yet later chunks (which replace entries)
    leave it exactly as it was."""
    cacher = StcCacher(update_token_ratio=0.5, cache_interval=2)
    state = cacher.new_state()
    frames = video(3, 3)
    with patch_for(tiny, cacher) as patch:
        steps = list(chunks(frames, 1))
        encode(tiny, patch, cacher, state, steps[0][1], steps[0][0])
        encode(tiny, patch, cacher, state, steps[1][1], steps[1][0])  # fills state.derived
        kept = cacher.copy_state(state)
        before = {i: [t.clone() for t in ref] for i, ref in kept.refs.items()}
        assert all(kept.refs[i][0] is state.refs[i][0] for i in state.refs)
        assert kept.derived.keys() == state.derived.keys()
        encode(tiny, patch, cacher, state, steps[2][1], steps[2][0])  # a reference chunk: new entries
    assert state.chunks_seen == 3 and kept.chunks_seen == 2
    assert all(state.refs[i][0] is not kept.refs[i][0] for i in state.refs)
    for i, ref in kept.refs.items():
        assert all(torch.equal(a, b) for a, b in zip(ref, before[i], strict=True))
    assert kept.derived.keys() == {0, 1} and not state.derived
