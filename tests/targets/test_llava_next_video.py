"""LLaVA-NeXT-Video target end to end on a tiny random-weight model.

References are the stock model's own forward (keep-all, and pruned streams through
``mm_encoder_outputs``) and, for VisionZip's CLS score on a tower with a class token, the
authors' arithmetic (:func:`visionzip_select.select` with ``has_cls``) fed the stock tower's
eager attention probabilities and hidden states.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from tests.support.models import random_frames, stock_reference_5_24
from tests.support.pipelines import pipeline as shared_pipeline
from tokencompress import CompatibilityError, Stage
from tokencompress.strategies.visionzip_select import dominant_scores_cls, select, split_heads
from tokencompress.targets.llava.llava_next_video import LlavaNextVideoTarget

pytestmark = pytest.mark.slow

PREFIX = torch.tensor([11, 12, 13, 14, 15])
QUESTION = torch.tensor([21, 22, 23])
FRAMES = random_frames(4, seed=3)
GRID, POOLED = 16, 4  # 56 px: 4x4 patches (+ CLS) per frame, 2x2 after the average pooler
TOL = {"atol": 1e-5, "rtol": 1e-5}  # measured: <= 2e-7 on the logits
_MODEL: list[torch.nn.Module] = []


def tiny() -> torch.nn.Module:
    if not _MODEL:
        _MODEL.append(LlavaNextVideoTarget.tiny_model(seed=1))
    return _MODEL[0]


pipeline = partial(shared_pipeline, target="llava_next_video")


def run_stream(pipe, frames=FRAMES):
    """(answer, stream, post_vit outputs per chunk)."""
    seen = []
    with pipe.apply(tiny()) as bound:
        original = bound.run_stage

        def capture(stage, tokens, *args, **kwargs):
            out = original(stage, tokens, *args, **kwargs)
            if stage is Stage.POST_VIT:
                seen.append(out)
            return out

        bound.run_stage = capture
        s = bound.stream()
        s.prefill_ids(PREFIX)
        s.add_frames(frames)
        return s.ask(QUESTION, max_new_tokens=2), s, seen


def stock_logits(n_video: int, **inputs) -> torch.Tensor:
    ids = torch.cat([PREFIX, torch.full((n_video,), tiny().config.video_token_index), QUESTION])[None]
    with torch.inference_mode():
        return tiny()(input_ids=ids, **inputs).logits[0, -1].float()


def pixels():
    return pipeline().bind(tiny()).target.preprocess(FRAMES)


@pytest.mark.parametrize("fpc", [1, 2, 4])
def test_keep_all_equals_plain_model(fpc):
    answer, stream, _ = run_stream(pipeline(fpc=fpc))
    expected = stock_logits(4 * POOLED, pixel_values_videos=pixels()[None])
    torch.testing.assert_close(answer.first_logits, expected, **TOL)
    assert stream.llm.visual_tokens == 4 * POOLED == stream.llm.length - len(PREFIX)
    assert [c.vit_tokens for c in stream.history] == [(GRID + 1) * fpc] * (4 // fpc)


def test_keep_all_strategies_are_identity():
    stages = {
        "pre_vit_block": [{"strategy": "tome", "r": 0, "class_token": True}],
        "pre_prefill": [{"strategy": "stc_pruner", "tokens_per_frame": POOLED}],
    }
    answer, _, _ = run_stream(pipeline(stages, fpc=2))
    torch.testing.assert_close(
        answer.first_logits, stock_logits(4 * POOLED, pixel_values_videos=pixels()[None]), **TOL
    )
    cacher = {"pre_vit_block": [{"strategy": "stc_cacher", "update_token_ratio": 1.0}]}
    answer, _, _ = run_stream(pipeline(cacher, fpc=2))
    torch.testing.assert_close(
        answer.first_logits, stock_logits(4 * POOLED, pixel_values_videos=pixels()[None]), **TOL
    )


def test_prefill_grid_map_is_the_stock_pooler():
    target = pipeline().bind(tiny()).target
    x = torch.randn(3, GRID, 64)
    with torch.inference_mode():
        torch.testing.assert_close(target.prefill_grid_map()(x), tiny().model.vision_resampler(x), **TOL)


# ----------------------------------------------------------------------- VisionZip
def _reference_selection(dominant: int, contextual: int):
    """The authors' arithmetic on the stock tower: CLS attention of layer -2 from eager weights,
    tokens = that layer's output, keys = its k_proj; the reference's dominant budget counts CLS."""
    model = LlavaNextVideoTarget.tiny_model(seed=1)
    tower = model.model.vision_tower
    tower.set_attn_implementation("eager")
    layer_index = len(tower.encoder.layers) - 2
    layer = tower.encoder.layers[layer_index]
    with torch.inference_mode():
        out = tower(pixels(), output_hidden_states=True, output_attentions=True, return_dict=True)
        attn = out.attentions[layer_index]  # [F, H, 1 + 16, 1 + 16]
        h_in, h_out = out.hidden_states[layer_index], out.hidden_states[layer_index + 1]
        keys = split_heads(layer.self_attn.k_proj(layer.layer_norm1(h_in)), layer.self_attn.num_heads)
        score = dominant_scores_cls(attn[:, :, 0, 1:])
        return select(h_out, score, keys.float().mean(dim=1), dominant + 1, contextual, has_cls=True)


def _same_rows(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal as sets of rows (the carrier orders rows by position, the reference by role)."""
    d = torch.cdist(a.float(), b.float())
    return (
        a.shape == b.shape
        and bool((d.min(dim=1).values < 1e-5).all())
        and bool((d.min(dim=0).values < 1e-5).all())
    )


@stock_reference_5_24
@pytest.mark.parametrize("contextual", [0, 3])
def test_visionzip_cls_score_before_pool_matches_the_reference(contextual):
    """placement before_pool, score cls, layer -2 (the reference's setting on a CLIP tower): the
    post_vit tokens of every frame are the reference's output minus its CLS row, and the pooler is
    skipped, so exactly those tokens, projected, reach the LLM (checked against the stock forward)."""
    dominant = 6
    step = {
        "strategy": "visionzip",
        "dominant": dominant,
        "contextual": contextual,
        "placement": "before_pool",
        "score": "cls",
        "layer": -2,
    }
    pipe = pipeline({"post_vit": [step]}, fpc=2)
    assert pipe.bind(tiny()).notes == []  # runs where it was declared: post_vit
    answer, stream, seen = run_stream(pipe)
    ref = _reference_selection(dominant, contextual)
    ours = torch.cat([t.tokens for t in seen]).view(4, dominant + contextual, -1)
    for f in range(4):
        assert _same_rows(ours[f], ref.output_tokens[f, 1:])  # the reference's row 0 is CLS
    if contextual == 0:
        dom = torch.sort(ref.dominant_indices[:, 1:] - 1).values  # patch indices, CLS excluded
        sources = torch.cat([t.source + 2 * GRID * c for c, t in enumerate(seen)])
        assert torch.equal(sources, (dom + GRID * torch.arange(4)[:, None]).reshape(-1))
    per = dominant + contextual
    assert [c.post_vit for c in stream.history] == [(2 * GRID, 2 * per)] * 2
    assert [c.pre_prefill for c in stream.history] == [(2 * per, 2 * per)] * 2
    with torch.inference_mode():
        projected = tiny().model.multi_modal_projector(torch.cat([t.tokens for t in seen]))
    outputs = BaseModelOutputWithPooling(pooler_output=projected[None])
    expected = stock_logits(4 * per, mm_encoder_outputs={"video": outputs})
    torch.testing.assert_close(answer.first_logits, expected, **TOL)


def test_visionzip_after_pool_runs_on_the_pooled_grid():
    step = {"strategy": "visionzip", "dominant": 2, "contextual": 1, "placement": "after_pool", "layer": -2}
    pipe = pipeline({"post_vit": [step]}, fpc=2)
    assert pipe.bind(tiny()).notes == [
        "visionzip (post_vit) runs on target llava_next_video's pre_prefill grid"
    ]
    _, stream, _ = run_stream(pipe)
    assert [c.pre_prefill for c in stream.history] == [(2 * POOLED, 2 * 3)] * 2


# ---------------------------------------------------------------------------- ToMe
def test_tome_protects_the_class_token_and_compact_is_refused():
    unmerge = {"pre_vit_block": [{"strategy": "tome", "r": 4, "class_token": True}]}
    _, stream, _ = run_stream(pipeline(unmerge, fpc=2))
    assert [c.pre_prefill for c in stream.history] == [(2 * POOLED, 2 * POOLED)] * 2
    compact = {"pre_vit_block": [{"strategy": "tome", "r": 4, "class_token": True, "output": "compact"}]}
    with pytest.raises(
        CompatibilityError, match="tome.*changes the token count at pre_vit_block.*llava_next_video"
    ):
        pipeline(compact).bind(tiny())


# ------------------------------------------------------------------ pipeline file
def test_visionzip_pipeline_runs_through_cli(tmp_path, capsys):
    """The ready file at the real checkpoints' geometry (336 px: 576 patches, 144 after pooling):
    the selection replaces the pooler, and the summary compares against the pooler's 144."""
    from pathlib import Path

    from tokencompress.cli.main import main
    from tokencompress.models.tokenizer import byte_tokenizer

    LlavaNextVideoTarget.tiny_model(image_size=336).save_pretrained(tmp_path)
    byte_tokenizer("llava_onevision").save_pretrained(tmp_path)
    path = Path(__file__).parents[2] / "pipelines" / "llava_next_video_visionzip.yaml"
    args = ["run", str(path), "--model", str(tmp_path), "--max-frames", "2", "--ask", "what?"]
    assert main([*args, "--max-new-tokens", "3", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "on target llava_next_video" in out
    assert "576→64" in out and "LLM visual tokens 288 → 128" in out


def test_target_conformance_kit():
    """The framework's target check (the matrix covers the strategies, so none are repeated here)."""
    from tokencompress.testing import check_target

    assert check_target(LlavaNextVideoTarget, strategies=[]) == []
