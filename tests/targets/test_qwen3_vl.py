"""Qwen3-VL target end to end on a tiny random-weight model.

The reference for every LLM-side check is the stock model's own forward on the equivalent
one-shot input: per temporal slice ``<t seconds><|vision_start|> pads <|vision_end|>`` (what the
stock processor writes), ``mm_token_type_ids``, ``pixel_values_videos`` and ``video_grid_thw``;
for pruned streams the stock forward gets the same kept features and DeepStack features through
``mm_encoder_outputs`` and the stock positions of the kept columns.
"""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.models import random_frames, stock_reference_5_24
from tests.support.pipelines import pipeline as shared_pipeline
from tokencompress.api.tokens import VisualTokens
from tokencompress.models.tokenizer import byte_tokenizer
from tokencompress.targets.qwen.qwen3_vl import DeepStackTokens, Qwen3VLTarget

pytestmark = pytest.mark.slow

SMALL = {"max_pixels": 128 * 128}  # 8x8 ViT patches of 16 px, 4x4 = 16 LLM tokens per 2-frame slice
PER_SLICE = 16
PREFIX = torch.tensor([11, 12, 13, 14, 15])
QUESTION = torch.tensor([21, 22, 23])
FRAMES = random_frames(6, seed=3)
TOKENIZER = byte_tokenizer("qwen2_vl")  # ids of "<0.2 seconds>" fit the tiny vocabulary
TOL = {"atol": 1e-5, "rtol": 1e-5}  # measured: <= 3e-7 on the logits
_MODEL: list[torch.nn.Module] = []


def tiny() -> torch.nn.Module:
    if not _MODEL:
        _MODEL.append(Qwen3VLTarget.tiny_model(seed=1))
    return _MODEL[0]


pipeline = functools.partial(
    shared_pipeline, fpc=2, stream={"fps": 2}, target="qwen3_vl", target_options=SMALL
)
"""2-frame slices span 1 s at 2 fps, as plain inputs say."""


def run_stream(pipe, frames=FRAMES, tokenizer=TOKENIZER, spy=False):
    """(answer, stream, kept carriers per chunk) of PREFIX, the frames, QUESTION."""
    kept = []
    with pipe.apply(tiny()) as bound:
        if spy:
            original = bound.target.prefill_visual

            def record(state, tokens):
                kept.append(tokens)
                return original(state, tokens)

            bound.target.prefill_visual = record
        s = bound.stream(tokenizer=tokenizer)
        s.prefill_ids(PREFIX)
        s.add_frames(frames)
        return s.ask(QUESTION, max_new_tokens=2), s, kept


def target() -> Qwen3VLTarget:
    return pipeline().bind(tiny()).target


def plain_inputs(frames, fpc, keep=None, timestamps=True):
    """The stock one-shot input: one video per chunk, one timestamped group per slice.

    ``keep`` (per chunk: kept rows' ``source``) shrinks each group to its kept tokens.
    """
    cfg, tg = tiny().config, target()
    pixels, grids, ids, types = [], [], [PREFIX], [torch.zeros(len(PREFIX), dtype=torch.int)]
    for c, i in enumerate(range(0, len(frames), fpc)):
        px = tg.preprocess(frames[i : i + fpc])
        pixels.append(px)
        grids.append(tg.grid_thw(px))
        for j, t in enumerate(tg.slice_times(i, len(frames[i : i + fpc]))):
            ts = TOKENIZER.encode(f"<{t:.1f} seconds>", add_special_tokens=False) if timestamps else []
            n = PER_SLICE if keep is None else int(((keep[c] // PER_SLICE) == j).sum())
            ids.append(
                torch.tensor(
                    ts + [cfg.vision_start_token_id] + [cfg.video_token_id] * n + [cfg.vision_end_token_id]
                )
            )
            types.append(torch.tensor([0] * (len(ts) + 1) + [2] * n + [0], dtype=torch.int))
    ids.append(QUESTION)
    types.append(torch.zeros(len(QUESTION), dtype=torch.int))
    return dict(
        input_ids=torch.cat(ids)[None],
        mm_token_type_ids=torch.cat(types)[None],
        pixel_values_videos=torch.cat(pixels),
        video_grid_thw=torch.cat(grids),
    )


def plain_positions(frames, fpc, timestamps=True) -> tuple[torch.Tensor, torch.Tensor]:
    """``[3, L]`` positions the stock model computes for the whole unpruned one-shot input, and
    ``[L]`` True at its video pads."""
    inputs = plain_inputs(frames, fpc, timestamps=timestamps)
    pos, _ = tiny().model.get_rope_index(
        inputs["input_ids"],
        mm_token_type_ids=inputs["mm_token_type_ids"],
        video_grid_thw=inputs["video_grid_thw"],
    )
    return pos[:, 0], inputs["mm_token_type_ids"][0] == 2


@functools.cache
def full_layout(timestamps: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return plain_positions(FRAMES, 6, timestamps)


def plain_logits(frames, fpc) -> torch.Tensor:
    model = tiny()
    model.model.rope_deltas = None
    with torch.inference_mode():
        return model(**plain_inputs(frames, fpc)).logits[0, -1].float()


# ------------------------------------------------------------------ block adapter
def test_adapter_pieces_equal_stock_block():
    """The Qwen block adapter runs Qwen3-VL's blocks (linear_fc MLP, learned position table added
    before block 0) piece by piece exactly like the stock block, for all queries and a subset."""
    tg = target()
    pixels = tg.preprocess(FRAMES[:4])
    grid = tg.grid_thw(pixels)
    calls = []
    hooks = [
        layer.register_forward_pre_hook(lambda m, a, k: calls.append((m, a, k)), with_kwargs=True)
        for layer in tg.vit_layers()
    ]
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode(), tg.using_layout(tg.chunk_layout(grid)):
        tiny().model.visual(pixels, grid_thw=grid)
        for h in hooks:
            h.remove()
        assert len(calls) == 2
        for block, args, kwargs in calls:
            hidden, rest = args[0], args[1:]
            stock = block(hidden, *rest, **kwargs)
            a = tg.block_adapter(block).bind(rest, kwargs)
            h = a.to_frames(hidden)
            assert h.shape[:2] == (2, 64)
            x = a.ln1(h)
            k, v = a.k(x), a.v(x)
            attn = a.out(a.attention(a.q(x), k, v))
            out = h + attn
            out = out + a.mlp(a.ln2(out))
            torch.testing.assert_close(a.from_frames(out), stock, atol=1e-5, rtol=1e-5)
            index = torch.stack([torch.randperm(64, generator=gen)[:9].sort().values for _ in range(2)])
            x_sel = torch.gather(x, 1, index[..., None].expand(-1, -1, x.shape[-1]))
            part = a.out(a.attention(a.q(x_sel), k, v, q_index=index))
            rows = torch.gather(attn, 1, index[..., None].expand(-1, -1, attn.shape[-1]))
            torch.testing.assert_close(part, rows, atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------- keep-all = stock
@pytest.mark.parametrize("fpc", [2, 4, 6])
def test_keep_all_any_even_chunking_equals_one_shot_video(fpc):
    """Every slice is its own timestamped group in the stock layout too, so 2-, 4- and 6-frame
    chunks all give the logits of the one-shot 6-frame video."""
    answer, stream, _ = run_stream(pipeline(fpc=fpc))
    torch.testing.assert_close(answer.first_logits, plain_logits(FRAMES, fpc=6), **TOL)
    assert stream.llm.visual_tokens == 3 * PER_SLICE
    sizes = [len(FRAMES[i : i + fpc]) for i in range(0, 6, fpc)]  # 4-frame chunks leave a 2-frame one
    assert [c.pre_prefill for c in stream.history] == [(PER_SLICE * n // 2,) * 2 for n in sizes]


def test_odd_chunks_equal_one_video_per_chunk():
    """3-frame chunks repeat their last frame (the processor's rule): each chunk is then one
    2-slice video of its own, timestamps included."""
    answer, _, _ = run_stream(pipeline(fpc=3))
    torch.testing.assert_close(answer.first_logits, plain_logits(FRAMES, fpc=3), **TOL)
    assert target().slice_times(3, 3) == (1.75, 2.5)  # frames (3, 4) and (5, 5) at 2 fps


def test_stc_cacher_at_full_ratio_changes_nothing():
    full = {"pre_vit_block": [{"strategy": "stc_cacher", "update_token_ratio": 1.0}]}
    answer, _, _ = run_stream(pipeline(full))
    torch.testing.assert_close(answer.first_logits, plain_logits(FRAMES, fpc=6), **TOL)


# ---------------------------------------------------------------------- DeepStack
def _stock_pruned_logits(kept, fpc):
    """The stock forward given exactly the kept features and DeepStack rows, at their unpruned positions."""
    from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

    model = tiny()
    full = plain_inputs(FRAMES, fpc)
    with torch.inference_mode():
        video = model.model.get_video_features(full["pixel_values_videos"], full["video_grid_thw"])
    feats, deep = torch.cat(video.pooler_output), [torch.cat(d) for d in video.deepstack_features]
    sources = torch.cat([c * fpc // 2 * PER_SLICE + t.source for c, t in enumerate(kept)])
    full_pos, is_video = plain_positions(FRAMES, fpc)
    video_cols = torch.nonzero(is_video).squeeze(1)
    keep_col = ~is_video
    keep_col[video_cols[sources]] = True
    pruned = plain_inputs(FRAMES, fpc, keep=[t.source for t in kept])
    outputs = BaseModelOutputWithDeepstackFeatures(
        pooler_output=(feats[sources],), deepstack_features=[(d[sources],) for d in deep]
    )
    model.model.rope_deltas = None
    with torch.inference_mode():
        logits = model(
            input_ids=pruned["input_ids"],
            mm_token_type_ids=pruned["mm_token_type_ids"],
            position_ids=full_pos[:, keep_col][:, None],
            mm_encoder_outputs={"video": outputs},
        ).logits[0, -1]
        wrong = BaseModelOutputWithDeepstackFeatures(
            pooler_output=(feats[sources],), deepstack_features=[(d[: len(sources)],) for d in deep]
        )
        model.model.rope_deltas = None
        wrong_logits = model(
            input_ids=pruned["input_ids"],
            mm_token_type_ids=pruned["mm_token_type_ids"],
            position_ids=full_pos[:, keep_col][:, None],
            mm_encoder_outputs={"video": wrong},
        ).logits[0, -1]
    return logits.float(), wrong_logits.float()


@stock_reference_5_24
@pytest.mark.parametrize(
    "step",
    [
        {"strategy": "stc_pruner", "tokens_per_frame": 5},
        {"strategy": "vidcom2", "retention_ratio": 0.3},
    ],
    ids=["stc_pruner", "vidcom2"],
)
def test_deepstack_features_follow_the_selection(step):
    """A pruned stream equals the stock forward fed the same kept rows of pooler_output *and* of every
    DeepStack feature map (same indices), at the kept columns' stock positions; DeepStack rows taken
    at other indices give different logits, so the check can fail."""
    fpc = 4
    answer, _, kept = run_stream(pipeline({"pre_prefill": [step]}, fpc=fpc), spy=True)
    assert all(isinstance(t, DeepStackTokens) and t.count < t.deepstack[0].shape[0] for t in kept)
    expected, wrong = _stock_pruned_logits(kept, fpc)
    torch.testing.assert_close(answer.first_logits, expected, **TOL)
    assert float((wrong - expected).abs().max()) > 1e-3
    for t in kept:  # the carrier's own gather, row for row
        for d, d_kept in zip(t.deepstack, t.deepstack_kept(), strict=True):
            assert torch.equal(d_kept, d[t.source])


def test_a_carrier_without_deepstack_is_refused():
    tg = target()
    plain = VisualTokens.from_frames(torch.zeros(1, PER_SLICE, 64), (4, 4))
    with pytest.raises(RuntimeError, match="DeepStack"):
        tg.prefill_visual(tg.new_llm_state(), plain)


# ------------------------------------------------------------------- positions
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    budget=st.integers(1, PER_SLICE),
    fpc=st.sampled_from([2, 4, 6]),
    cacher=st.booleans(),
    timestamps=st.booleans(),
)
def test_pruned_tokens_keep_their_unpruned_positions(budget, fpc, cacher, timestamps):
    """Positions passed for the kept visual tokens are the stock model's positions of the full,
    unpruned one-shot sequence at their sources; timestamps, vision start/end and the text after the
    video sit where the stock model puts them (without a tokenizer: the layout without timestamps)."""
    stages = {"pre_prefill": [{"strategy": "stc_pruner", "tokens_per_frame": budget}]}
    if cacher:
        stages["pre_vit_block"] = [{"strategy": "stc_cacher", "update_token_ratio": 0.25}]
    seen = []
    with pipeline(stages, fpc=fpc).apply(tiny()) as bound:
        original = bound.target.visual_positions

        def spy(state, tokens):
            pos = original(state, tokens)
            seen.append((tokens.source.clone(), pos.clone()))
            return pos

        bound.target.visual_positions = spy
        s = bound.stream(tokenizer=TOKENIZER if timestamps else None)
        s.prefill_ids(PREFIX)
        s.add_frames(FRAMES)
    full, is_video = full_layout(timestamps)
    video_cols = torch.nonzero(is_video).squeeze(1)
    slices = fpc // 2
    assert len(seen) == 6 // fpc
    start = len(PREFIX)
    for c, (source, pos) in enumerate(seen):
        assert source.numel() == slices * budget
        first_video = video_cols[c * slices * PER_SLICE]
        last_video = video_cols[(c + 1) * slices * PER_SLICE - 1]
        span = torch.arange(
            start, int(last_video) + 2
        )  # the chunk's columns, through its last <|vision_end|>
        keep = ~is_video[span]
        keep[(video_cols[c * slices * PER_SLICE + source] - start)] = True
        assert pos.shape == (3, 1, int(keep.sum()))
        assert torch.equal(pos[:, 0], full[:, span[keep]])
        assert int(first_video) > start
        start = int(span[-1]) + 1
    assert s.llm.next_position == int(full[0, start])  # where the stock model puts the question


# ------------------------------------------------------------------ pipeline file
def test_livecc_qwen3_pipeline_runs_through_cli(tmp_path, capsys):
    from pathlib import Path

    from tokencompress.cli.main import main

    tiny().save_pretrained(tmp_path)
    TOKENIZER.save_pretrained(tmp_path)
    path = Path(__file__).parents[2] / "pipelines" / "livecc_qwen3_stc.yaml"
    args = ["run", str(path), "--model", str(tmp_path), "--max-frames", "4", "--ask", "what?"]
    assert main([*args, "--max-new-tokens", "3", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "on target qwen3_vl; 2 frame(s)/chunk at 2 fps" in out
    assert "196→60" in out and "LLM visual tokens 392 → 120" in out  # 448x448: 14x14 merged per slice


def test_target_conformance_kit():
    """The framework's target check (the matrix covers the strategies, so none are repeated here)."""
    from tokencompress.testing import check_target

    assert check_target(Qwen3VLTarget, strategies=[]) == []
