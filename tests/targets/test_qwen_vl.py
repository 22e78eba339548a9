"""Qwen2-VL / Qwen2.5-VL targets end to end on tiny random-weight models.

The reference for every LLM-side check is the stock model's own forward on the equivalent
one-shot input (``input_ids`` with vision start/end and video pads, ``mm_token_type_ids``,
``pixel_values_videos``, ``video_grid_thw``), so positions, placement and the chunk layout are
checked against what transformers itself computes.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.models import random_frames
from tests.support.pipelines import pipeline as shared_pipeline
from tokencompress import Pipeline, Stage, load_model
from tokencompress.api.target import cache_argument
from tokencompress.targets.qwen.qwen2_vl import Qwen2_5_VLTarget, Qwen2VLTarget
from tokencompress.targets.qwen.qwen_patches import fit_to_grid, frames_to_patches

pytestmark = pytest.mark.slow

TARGETS = [Qwen2VLTarget, Qwen2_5_VLTarget]
IDS = [t.name for t in TARGETS]
SMALL = {"max_pixels": 112 * 112}  # 8x8 ViT patches, 4x4 = 16 LLM tokens per 2-frame slice
PREFIX = torch.tensor([11, 12, 13, 14, 15])
QUESTION = torch.tensor([21, 22, 23])
FRAMES = random_frames(6, seed=3)
_MODELS: dict[str, torch.nn.Module] = {}


def tiny(target_cls) -> torch.nn.Module:
    if target_cls.name not in _MODELS:
        _MODELS[target_cls.name] = target_cls.tiny_model(seed=1)
    return _MODELS[target_cls.name]


pipeline = partial(shared_pipeline, fpc=2, stream={"fps": 2}, target_options=SMALL)
"""2-frame slices span 1 s at 2 fps, as plain inputs say."""


def stream_answer(model, pipe, frames=FRAMES, max_new_tokens=3):
    with pipe.apply(model) as bound:
        s = bound.stream()
        s.prefill_ids(PREFIX)
        s.add_frames(frames)
        return s.ask(QUESTION, max_new_tokens=max_new_tokens), s


def plain_inputs(model, target, frames, fpc):
    """The stock one-shot input for PREFIX, one vision group per chunk, QUESTION."""
    cfg = model.config
    pixels = [target.preprocess(frames[i : i + fpc]) for i in range(0, len(frames), fpc)]
    grids = torch.cat([target.grid_thw(p) for p in pixels])
    ids, types = [PREFIX], [torch.zeros(len(PREFIX), dtype=torch.int)]
    for grid in grids:
        n = int(grid.prod()) // target.merge**2
        ids.append(
            torch.tensor([cfg.vision_start_token_id] + [cfg.video_token_id] * n + [cfg.vision_end_token_id])
        )
        types.append(torch.tensor([0] + [2] * n + [0], dtype=torch.int))
    ids.append(QUESTION)
    types.append(torch.zeros(len(QUESTION), dtype=torch.int))
    inputs = dict(
        input_ids=torch.cat(ids)[None],
        mm_token_type_ids=torch.cat(types)[None],
        pixel_values_videos=torch.cat(pixels),
        video_grid_thw=grids,
    )
    if isinstance(target, Qwen2_5_VLTarget):
        inputs["second_per_grid_ts"] = torch.ones(len(pixels))
    return inputs


def plain_logits(model, target, frames, fpc):
    model.model.rope_deltas = None
    with torch.inference_mode():
        return model(**plain_inputs(model, target, frames, fpc)).logits[0, -1].float()


def plain_positions(model, target, frames, fpc) -> torch.Tensor:
    """``[3, L]`` positions the stock model computes for the whole unpruned one-shot input."""
    inputs = plain_inputs(model, target, frames, fpc)
    kw = {"second_per_grid_ts": inputs["second_per_grid_ts"]} if "second_per_grid_ts" in inputs else {}
    pos, _ = model.model.get_rope_index(
        inputs["input_ids"],
        mm_token_type_ids=inputs["mm_token_type_ids"],
        video_grid_thw=inputs["video_grid_thw"],
        **kw,
    )
    return pos[:, 0]


# ----------------------------------------------------------------- preprocessing
def test_fit_to_grid_matches_transformers_smart_resize():
    pytest.importorskip("PIL")
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    rng = np.random.default_rng(0)
    for _ in range(500):
        h, w = (int(v) for v in rng.integers(8, 2000, size=2))
        lo, hi = sorted(int(v) for v in rng.choice([56 * 56, 112 * 112, 448 * 448, 384 * 28 * 28], size=2))
        if max(h, w) / min(h, w) <= 200:
            assert fit_to_grid(h, w, 28, lo, hi) == smart_resize(h, w, 28, lo, hi)


def test_patches_match_qwen_image_processor_layout():
    """Each frame of a pair, processed as an image by the stock PIL processor (which repeats it over
    the temporal axis), is the matching temporal half of our pair's patches, bit for bit."""
    pytest.importorskip("PIL")
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    proc = Qwen2VLImageProcessorPil()
    pair = random_frames(2, seed=5, h=112, w=168)
    ours, grid = frames_to_patches(pair, (112, 168), patch=14, merge=2, temporal=2)
    assert grid == (1, 8, 12) and ours.shape == (96, 3 * 2 * 14 * 14)
    for k in range(2):
        ref = proc(images=[pair[k]], return_tensors="pt", do_resize=False)
        assert ref["image_grid_thw"].tolist() == [[1, 8, 12]]
        theirs = ref["pixel_values"].view(-1, 3, 2, 14, 14)[:, :, k]
        assert torch.equal(ours.view(-1, 3, 2, 14, 14)[:, :, k], theirs)


def test_patches_resize_close_to_pil_and_pad_odd_frames():
    pytest.importorskip("PIL")
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    frame = random_frames(1, seed=6, h=90, w=100)
    ref = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112)(
        images=[frame[0]], return_tensors="pt"
    )
    _, gh, gw = ref["image_grid_thw"][0].tolist()
    ours, grid = frames_to_patches(frame, (gh * 14, gw * 14), patch=14, merge=2, temporal=2)
    assert grid == (1, gh, gw)  # one frame is padded to a pair by repeating it, as the processor does
    diff = (ours - ref["pixel_values"]).abs()  # torch bicubic vs PIL bicubic (+ uint8 rounding)
    assert float(diff.mean()) < 0.01 and float(diff.max()) < 0.1


# ------------------------------------------------------------------ block adapter
@pytest.mark.parametrize("target_cls", TARGETS, ids=IDS)
def test_adapter_pieces_equal_stock_block(target_cls):
    model = tiny(target_cls)
    target = target_cls(model, target_cls.Options(**SMALL))
    pixels = target.preprocess(FRAMES[:4])
    grid = target.grid_thw(pixels)
    calls = []
    hooks = [
        layer.register_forward_pre_hook(lambda m, a, k: calls.append((m, a, k)), with_kwargs=True)
        for layer in target.vit_layers()
    ]
    gen = torch.Generator().manual_seed(0)
    windowed = []
    with torch.inference_mode(), target.using_layout(target.chunk_layout(grid)):
        model.model.visual(pixels, grid_thw=grid)
        for h in hooks:
            h.remove()
        for block, args, kwargs in calls:
            hidden, rest = args[0], args[1:]
            stock = block(hidden, *rest, **kwargs)
            a = target.block_adapter(block).bind(rest, kwargs)
            windowed.append(a._call.segments is not None)
            h = a.to_frames(hidden)  # [2 slices, 64, C]
            assert h.shape == (2, 64, h.shape[-1])
            x = a.ln1(h)
            k, v = a.k(x), a.v(x)
            attn = a.out(a.attention(a.q(x), k, v))
            out = h + attn
            out = out + a.mlp(a.ln2(out))
            torch.testing.assert_close(a.from_frames(out), stock, atol=1e-5, rtol=1e-5)
            # a query subset at its positions gives the same rows as all queries
            index = torch.stack([torch.randperm(64, generator=gen)[:9].sort().values for _ in range(2)])
            x_sel = torch.gather(x, 1, index[..., None].expand(-1, -1, x.shape[-1]))
            part = a.out(a.attention(a.q(x_sel), k, v, q_index=index))
            rows = torch.gather(attn, 1, index[..., None].expand(-1, -1, attn.shape[-1]))
            torch.testing.assert_close(part, rows, atol=1e-6, rtol=1e-6)
    fullatt = getattr(model.config.vision_config, "fullatt_block_indexes", None)
    expected = [i not in fullatt for i in range(len(calls))] if fullatt is not None else [False] * len(calls)
    assert windowed == expected


def _dense_masked_attention(a, q, k, v, q_index, key_bias):
    """The windowed attention as one dense SDPA over all ``T`` keys, a window mask per query."""
    call, (f, n, c), heads = a._call, q.shape, a.num_heads

    def rotate(x, index):
        cos, sin = (
            torch.gather(t, 1, index[..., None].expand(-1, -1, t.shape[-1])) for t in (call.cos, call.sin)
        )
        return a._rotate(x.view(f, -1, heads, c // heads), cos, sin).transpose(1, 2)

    every = torch.arange(k.shape[1]).expand(f, -1)
    qh, kh, vh = rotate(q, q_index), rotate(k, every), v.view(f, -1, heads, c // heads).transpose(1, 2)
    mask = (call.segments[q_index][:, :, None] == call.segments[None, None, :])[:, None]
    if key_bias is not None:
        mask = key_bias[:, None, None, :].expand(-1, -1, n, -1).masked_fill(~mask, float("-inf"))
    o = torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=a._attn.scaling)
    return o.transpose(1, 2).reshape(f, n, c)


def test_windowed_attention_equals_dense_masked_attention():
    """Per-window attention (uneven windows: 140 px frames are 5x5 merged, windows of 2x2 merged)
    gives the dense window-masked attention for any query subset, with and without key bias."""
    model = tiny(Qwen2_5_VLTarget)
    target = Qwen2_5_VLTarget(model, Qwen2_5_VLTarget.Options(frame_size=(140, 140)))
    pixels = target.preprocess(FRAMES[:4])
    grid = target.grid_thw(pixels)
    assert grid.tolist() == [[2, 10, 10]]
    calls = []
    layer = target.vit_layers()[0]
    hook = layer.register_forward_pre_hook(lambda m, a, k: calls.append((a, k)), with_kwargs=True)
    gen = torch.Generator().manual_seed(0)
    try:
        with torch.inference_mode(), target.using_layout(target.chunk_layout(grid)):
            model.model.visual(pixels, grid_thw=grid)
            args, kwargs = calls[0]
            a = target.block_adapter(layer).bind(args[1:], kwargs)
            assert sorted(torch.bincount(a._call.segments).tolist()) == [4] + [8] * 4 + [16] * 4
            f, t, c = 2, 100, a.num_heads * a.head_dim
            k, v = (torch.randn(f, t, c, generator=gen) for _ in range(2))
            for n in (1, 5, 9, 16, 17, 40, 100):
                index = torch.stack([torch.randperm(t, generator=gen)[:n] for _ in range(f)])
                q = torch.randn(f, n, c, generator=gen)
                for bias in (None, torch.randn(f, t, generator=gen)):
                    got = a.attention(q, k, v, q_index=index, key_bias=bias)
                    want = _dense_masked_attention(a, q, k, v, index, bias)
                    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
            q = torch.randn(f, t, c, generator=gen)
            want = _dense_masked_attention(a, q, k, v, torch.arange(t).expand(f, -1), None)
            torch.testing.assert_close(a.attention(q, k, v), want, atol=1e-6, rtol=1e-6)
    finally:
        hook.remove()


def test_windowed_adapter_refuses_without_layout():
    target = Qwen2_5_VLTarget(tiny(Qwen2_5_VLTarget), Qwen2_5_VLTarget.Options(**SMALL))
    adapter = target.block_adapter(target.vit_layers()[0])
    cos = torch.zeros(128, 16)
    with pytest.raises(RuntimeError, match="chunk layout"):
        adapter.bind((), {"cu_seqlens": torch.tensor([0, 64, 128]), "position_embeddings": (cos, cos)})


# ------------------------------------------------------------- keep-all = stock
@pytest.mark.parametrize("target_cls", TARGETS, ids=IDS)
def test_keep_all_one_chunk_equals_plain_model(target_cls):
    model = tiny(target_cls)
    frames = FRAMES[:4]
    answer, stream = stream_answer(model, pipeline(fpc=4), frames)
    target = pipeline().bind(model).target
    expected = plain_logits(model, target, frames, fpc=4)
    torch.testing.assert_close(answer.first_logits, expected, atol=1e-4, rtol=1e-4)
    assert stream.llm.visual_tokens == 2 * 16 and stream.llm.length == len(PREFIX) + 2 * 16 + 2


@pytest.mark.parametrize("fpc", [2, 3])
@pytest.mark.parametrize("target_cls", TARGETS, ids=IDS)
def test_chunked_prefill_equals_plain_multi_group_forward(target_cls, fpc):
    """LiveCC layout: each chunk its own vision group; 3-frame chunks repeat their last frame."""
    model = tiny(target_cls)
    answer, stream = stream_answer(model, pipeline(fpc=fpc))
    target = pipeline().bind(model).target
    expected = plain_logits(model, target, FRAMES, fpc=fpc)
    torch.testing.assert_close(answer.first_logits, expected, atol=1e-4, rtol=1e-4)
    slices = [target.token_frames(len(FRAMES[i : i + fpc])) for i in range(0, len(FRAMES), fpc)]
    assert [c.pre_prefill for c in stream.history] == [(16 * n, 16 * n) for n in slices]
    assert [c.vit_tokens for c in stream.history] == [64 * n for n in slices]


def test_reloaded_checkpoint_keeps_all_equal_to_plain(saved_qwen2vl):
    loaded = load_model(str(saved_qwen2vl))
    original = tiny(Qwen2VLTarget)
    for a, b in zip(original.state_dict().values(), loaded.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    answer, _ = stream_answer(loaded.model, pipeline(fpc=2))
    target = pipeline().bind(loaded.model).target
    assert target.name == "qwen2_vl"
    torch.testing.assert_close(
        answer.first_logits, plain_logits(original, target, FRAMES, 2), atol=1e-4, rtol=1e-4
    )


@pytest.mark.parametrize("target_cls", TARGETS, ids=IDS)
def test_apply_exit_restores_model_bit_for_bit(target_cls):
    model = tiny(target_cls)
    stc = {
        "pre_vit_block": [{"strategy": "stc_cacher", "update_token_ratio": 0.25}],
        "pre_prefill": [{"strategy": "stc_pruner", "tokens_per_frame": 5}],
    }
    pipe = pipeline(stc)
    target = pipe.bind(model).target
    inputs = plain_inputs(model, target, FRAMES[:4], fpc=2)
    layers = target.vit_layers()

    def run():
        model.model.rope_deltas = None
        with torch.inference_mode():
            return model(**inputs).logits

    before = run()
    with pipe.apply(model) as bound:
        assert all("forward" in layer.__dict__ for layer in layers)
        inside = run()
        s = bound.stream()
        s.add_frames(FRAMES)
        s.ask(QUESTION, max_new_tokens=2)
    after = run()
    assert not any("forward" in layer.__dict__ for layer in layers)
    assert torch.equal(before, inside) and torch.equal(before, after)


# ------------------------------------------------------------------- positions
def _record_visual_positions(bound):
    """Wrap the bound target's visual_positions to record (kept sources, positions) per chunk."""
    target, seen = bound.target, []
    original = target.visual_positions

    def spy(state, tokens):
        pos = original(state, tokens)
        seen.append((tokens.source.clone(), tokens.frame.clone(), pos.clone()))
        return pos

    target.visual_positions = spy
    return seen


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    target_index=st.integers(0, 1),
    budget=st.integers(1, 16),
    fpc=st.sampled_from([2, 4]),
    cacher=st.booleans(),
)
def test_pruned_tokens_keep_their_unpruned_positions(target_index, budget, fpc, cacher):
    """The positions passed for kept visual tokens are the stock model's positions of the full,
    unpruned one-shot sequence at those tokens' sources; the vision start/end tokens and the text
    after the video sit where the stock model puts them."""
    target_cls = TARGETS[target_index]
    model = tiny(target_cls)
    stages = {"pre_prefill": [{"strategy": "stc_pruner", "tokens_per_frame": budget}]}
    if cacher:
        stages["pre_vit_block"] = [{"strategy": "stc_cacher", "update_token_ratio": 0.25}]
    frames = FRAMES[:4]
    with pipeline(stages, fpc=fpc).apply(model) as bound:
        seen = _record_visual_positions(bound)
        s = bound.stream()
        s.prefill_ids(PREFIX)
        s.add_frames(frames)
        full = plain_positions(model, bound.target, frames, fpc)
        start = len(PREFIX)
        first_slice = 0
        for source, frame, pos in seen:
            slices = fpc // 2
            n = slices * 16
            assert pos.shape == (3, 1, source.numel() + 2)
            expected = torch.cat(
                [
                    full[:, start : start + 1],
                    full[:, start + 1 + source],
                    full[:, start + n + 1 : start + n + 2],
                ],
                1,
            )
            assert torch.equal(pos[:, 0], expected)
            assert source.numel() == slices * budget
            assert torch.equal(
                torch.bincount(frame - first_slice, minlength=slices), torch.full((slices,), budget)
            )
            start += n + 2
            first_slice += slices
        assert s.llm.next_position == int(full[0, start])  # where the stock model puts the question
        assert s.llm.length == len(PREFIX) + len(seen) * (2 + (fpc // 2) * budget)


@pytest.mark.parametrize("target_cls", TARGETS, ids=IDS)
def test_decode_after_pruning_continues_from_the_counter(target_cls):
    model = tiny(target_cls)
    stages = {"pre_prefill": [{"strategy": "stc_pruner", "tokens_per_frame": 5}]}
    calls = []

    def hook(_m, _args, kwargs):
        calls.append(
            (
                kwargs["position_ids"].clone(),
                model.model.rope_deltas,
                kwargs[cache_argument(model.model.language_model)].get_seq_length(),
            )
        )

    handle = model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)
    model.model.rope_deltas = torch.tensor([[1234]])  # stale value from some earlier stock call
    try:
        with pipeline(stages).apply(model) as bound:
            s = bound.stream()
            s.prefill_ids(PREFIX)
            s.add_frames(FRAMES)
            counter, cached = s.llm.next_position, s.llm.length
            calls.clear()
            answer = s.ask(QUESTION, max_new_tokens=4)
    finally:
        handle.remove()
    assert len(answer.token_ids) == 4
    question, *steps = calls
    assert question[0].shape == (3, 1, len(QUESTION))
    assert torch.equal(question[0][:, 0], torch.arange(counter, counter + 3).expand(3, -1))
    assert len(steps) == 3  # the 4th token's logits are never needed, so it is not prefilled
    for i, (pos, deltas, cache_len) in enumerate(steps):
        assert pos.shape == (3, 1, 1) and bool((pos == counter + 3 + i).all())
        assert cache_len == cached + 3 + i
        assert int(deltas) == counter - cached  # stock rule: position = cache length + delta
    assert model.model.rope_deltas.tolist() == [[1234]]  # restored: the model is shared
    assert s.llm.next_position == counter and s.llm.length == cached  # ask() rewinds
    model.model.rope_deltas = None


# ---------------------------------------------------------------------- cacher
@pytest.mark.parametrize("target_cls", TARGETS, ids=IDS)
def test_stc_cacher_on_qwen(target_cls):
    model = tiny(target_cls)
    chunks = [FRAMES[i : i + 2] for i in range(0, 6, 2)] + [FRAMES[1:3]]

    def encode(stages):
        with pipeline(stages).apply(model) as bound:
            s = bound.stream()
            return [s.encode_only(c).tokens for c in chunks]

    plain = encode({})
    full = encode({"pre_vit_block": [{"strategy": "stc_cacher", "update_token_ratio": 1.0}]})
    for p, f in zip(plain, full, strict=True):
        torch.testing.assert_close(f, p, atol=1e-5, rtol=1e-5)
    cached = encode(
        {"pre_vit_block": [{"strategy": "stc_cacher", "update_token_ratio": 0.25, "cache_interval": 2}]}
    )
    for i, (p, c) in enumerate(zip(plain, cached, strict=True)):
        if i % 2 == 0:  # reference chunk: the full layer through the adapter
            if target_cls is Qwen2VLTarget:
                assert torch.equal(c, p)  # same kernels, same token order as the stock block
            else:  # full-attention blocks see block order instead of window order: ~1e-8
                torch.testing.assert_close(c, p, atol=1e-5, rtol=1e-5)
        else:
            assert float((c - p).abs().max()) > 1e-3


@pytest.mark.parametrize(("target_cls", "variants"), [(Qwen2VLTarget, 1), (Qwen2_5_VLTarget, 2)], ids=IDS)
def test_block_call_data_is_derived_once_per_chunk_and_variant(target_cls, variants, monkeypatch):
    """Binding a block reuses what was derived from the same ``cu_seqlens`` earlier in the chunk
    (Qwen2-VL: one variant; Qwen2.5-VL: windowed and full), never what another chunk derived."""
    from tokencompress.targets.qwen import qwen_vision_block

    derive, derived = qwen_vision_block._derive_call, []

    def counting(cu_seqlens, *args):
        derived.append(cu_seqlens)
        return derive(cu_seqlens, *args)

    monkeypatch.setattr(qwen_vision_block, "_derive_call", counting)
    model = tiny(target_cls)
    stages = {"pre_vit_block": [{"strategy": "stc_cacher", "update_token_ratio": 0.25, "cache_interval": 2}]}
    with pipeline(stages).apply(model) as bound:
        slot = bound.target._slot
        s = bound.stream()
        for i in range(0, 6, 2):  # a reference chunk, a cached one, a reference one
            derived.clear()
            s.encode_only(FRAMES[i : i + 2])
            assert len(derived) == variants < len(bound.target.vit_layers())
            assert len({id(cu) for cu in derived}) == variants
            assert slot.current is None and slot._memo is None  # dropped with the chunk


# ----------------------------------------------------------------- pipeline file
@pytest.fixture(scope="module")
def saved_qwen2vl(tmp_path_factory) -> Path:
    from tokencompress.models.tokenizer import byte_tokenizer

    path = tmp_path_factory.mktemp("tiny-qwen2vl")
    tiny(Qwen2VLTarget).save_pretrained(path)
    byte_tokenizer("qwen2_vl").save_pretrained(path)
    return path


@pytest.mark.parametrize("target_cls", [Qwen2VLTarget, Qwen2_5_VLTarget], ids=["qwen2_vl", "qwen2_5_vl"])
def test_livecc_pipeline_runs_through_cli(target_cls, tmp_path, capsys):
    from tokencompress.cli.main import main
    from tokencompress.models.tokenizer import byte_tokenizer

    tiny(target_cls).save_pretrained(tmp_path)
    byte_tokenizer("qwen2_vl").save_pretrained(tmp_path)
    path = Path(__file__).parents[2] / "pipelines" / "livecc_stc.yaml"
    args = ["run", str(path), "--model", str(tmp_path), "--max-frames", "4", "--ask", "what?"]
    assert main([*args, "--max-new-tokens", "3", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"on target {target_cls.name}; 2 frame(s)/chunk at 2 fps" in out
    assert "256→78" in out  # 448x448 frames: 16x16 merged tokens per slice, 78 kept
    assert "Q: what?" in out


def test_default_geometry():
    target = Qwen2VLTarget(tiny(Qwen2VLTarget))  # default options: 448x448 frames
    info = target.stage_info()
    assert target.frame_hw == (448, 448)
    assert (info[Stage.PRE_VIT_BLOCK].tokens_per_frame, info[Stage.PRE_PREFILL].tokens_per_frame) == (
        1024,
        256,
    )
    assert info[Stage.POST_VIT].count_locked and not info[Stage.PRE_PREFILL].count_locked
    wide = Qwen2VLTarget(tiny(Qwen2VLTarget), Qwen2VLTarget.Options(frame_size=(272, 640)))
    assert wide.frame_hw == (280, 644) and wide.merged_grid == (10, 23)
    assert target.token_frames(1) == target.token_frames(2) == 1 and target.token_frames(5) == 3


@pytest.mark.parametrize("target_cls", TARGETS, ids=IDS)
def test_post_vit_block_order_maps_onto_merged_grid(target_cls):
    """post_vit rows are in merge-block order with their true (row, col); the prefill grid map
    (mean of each block) lands every block on its merged token, row-major like pre_prefill."""
    model = tiny(target_cls)
    seen = {}
    with pipeline().apply(model) as bound:
        target = bound.target
        original = bound.run_stage

        def capture(stage, tokens, *args, **kwargs):
            seen[stage] = tokens
            return original(stage, tokens, *args, **kwargs)

        bound.run_stage = capture
        bound.stream().encode_only(FRAMES[:4])
    post, pre = seen[Stage.POST_VIT], seen[Stage.PRE_PREFILL]
    assert post.grid == (8, 8) and pre.grid == (4, 4) and post.num_frames == pre.num_frames == 2
    to_merged = target.prefill_grid_map()
    centres = to_merged(post.pos.float().view(2, 64, 2))  # [2, 16, 2]
    assert torch.equal(centres, (2 * pre.pos.float() + 0.5).view(2, 16, 2))
    # the stock merger on the post_vit rows (4 consecutive per token) reproduces pre_prefill
    with torch.inference_mode():
        merged = model.model.visual.merger(post.tokens)
    torch.testing.assert_close(merged, pre.tokens, atol=1e-6, rtol=1e-6)


def test_qwen25_slice_duration_follows_the_stream_fps():
    model = tiny(Qwen2_5_VLTarget)
    for fps, seconds in ((2, 1.0), (1, 2.0), (0.5, 4.0)):
        bound = Pipeline.from_dict({"stream": {"fps": fps}}).bind(model)
        assert bound.target.rope_index_kwargs()["second_per_grid_ts"].tolist() == [seconds]
    fixed = Pipeline.from_dict({"stream": {"fps": 1}, "target_options": {"second_per_grid_t": 0.5}}).bind(
        model
    )
    assert fixed.target.rope_index_kwargs()["second_per_grid_ts"].tolist() == [0.5]
