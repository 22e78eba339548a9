"""Every ready-made file in pipelines/ runs on the built-in model and a real clip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.support.paths import PIPELINES as PIPELINES_DIR
from tokencompress import Pipeline, Stage
from tokencompress.api.errors import BudgetError
from tokencompress.media.video import iter_frames, sample_video_path

ALL_PIPELINES = sorted(PIPELINES_DIR.glob("*.yaml"))
PIPELINES = [p for p in ALL_PIPELINES if Pipeline.from_yaml(p).config.target in ("auto", "llava_onevision")]


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return np.stack([f.rgb for f in iter_frames(sample_video_path("bikes.mp4"), fps=1.0, max_frames=4)])


@pytest.fixture(scope="module")
def deep_builtin(builtin_model):
    """The built-in model with an 8-layer decoder (the bench preset's depth at the tiny width): the
    in_decoder files drop before layer 2 (FastV) or at quarters of the depth (PyramidDrop), which the
    built-in model's 2 layers cannot host."""
    from transformers import LlavaOnevisionForConditionalGeneration

    from tokencompress.models.loading import default_model_config

    tok = builtin_model.tokenizer
    ids = (tok.convert_tokens_to_ids("<image>"), tok.convert_tokens_to_ids("<video>"))
    config = default_model_config(len(tok), *ids, text_config={"num_hidden_layers": 8})
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return LlavaOnevisionForConditionalGeneration(config).eval()


@pytest.mark.slow
@pytest.mark.parametrize("path", PIPELINES, ids=[p.stem for p in PIPELINES])
def test_pipeline_file_runs(path: Path, builtin_model, deep_builtin, clip: np.ndarray) -> None:
    in_decoder = Pipeline.from_yaml(path).config.strategies(Stage.IN_DECODER)
    model = deep_builtin if in_decoder else builtin_model.model
    pipe = _fit_depth(path, model)
    with pipe.apply(model) as bound:
        stream = bound.stream(tokenizer=builtin_model.tokenizer)
        stats = stream.add_frames(clip)
        stats += stream.flush()
        assert sum(c.frames for c in stats) == len(clip)
        for c in stats:
            assert c.vit_tokens == 729 * c.frames and c.pre_prefill[0] == 196 * c.frames
            planned = bound.planned_tokens(Stage.PRE_PREFILL, c.frames)
            if planned is not None and not bound.by_stage[Stage.POST_VIT]:
                assert c.pre_prefill[1] == planned
        answer = stream.ask("What is happening?", max_new_tokens=3)
        assert len(answer.token_ids) <= 3


def _fit_depth(path: Path, model) -> Pipeline:
    """The file's pipeline; a decode policy set for a real checkpoint's depth (``dycoke_kv.l``) is first
    checked to be refused on the 2-layer built-in model, then run at its deepest valid layer."""
    pipe = Pipeline.from_yaml(path)
    depth = model.config.get_text_config().num_hidden_layers
    doc = yaml.safe_load(path.read_text())
    steps = [s for s in (doc.get("stages") or {}).get("kv_cache") or [] if s.get("strategy") == "dycoke_kv"]
    if not any(s.get("l", 3) >= depth for s in steps):
        return pipe
    with pytest.raises(BudgetError, match="dycoke_kv.l = "):
        pipe.bind(model)
    for s in steps:
        s["l"] = depth - 1
    return Pipeline.from_dict(doc)


def test_every_strategy_has_a_ready_file() -> None:
    used = {
        s.name for p in ALL_PIPELINES for steps in Pipeline.from_yaml(p).config.stages.values() for s in steps
    }
    assert {
        "stc_cacher",
        "stc_pruner",
        "tome",
        "visionzip",
        "vidcom2",
        "rekv",
        "sliding_window",
        "fastv",
        "pdrop",
    } <= used


# ------------------------------------------------ files for one target: its tiny model, real counts
TARGETED = [p for p in ALL_PIPELINES if p not in PIPELINES]


def _target_model(name: str, options: dict | None = None):
    """(model with the real checkpoints' token geometry, tokenizer, LLM tokens per token frame)."""
    from tokencompress.models.tokenizer import byte_tokenizer
    from tokencompress.targets.llava.llava_next_video import LlavaNextVideoTarget
    from tokencompress.targets.qwen.qwen2_vl import Qwen2_5_VLTarget
    from tokencompress.targets.qwen.qwen3_vl import Qwen3VLTarget

    if name == "qwen3_vl":  # 448x448 frames (the target's default): 14x14 merged tokens per slice
        return Qwen3VLTarget.tiny_model(), byte_tokenizer("qwen2_vl"), 196
    if name == "qwen2_5_vl":
        # 448x448 frames (the target's default): 16x16 merged tokens per slice; the clip's 272x640
        # frames under a 128x28x28 pixel cap (infinipot_v_qwen): 11x11
        capped = (options or {}).get("max_pixels") == 128 * 28 * 28
        return Qwen2_5_VLTarget.tiny_model(), byte_tokenizer("qwen2_vl"), 121 if capped else 256
    if name == "llava_next_video":  # 336 px CLIP: 24x24 patches + CLS, pooled to 12x12
        return LlavaNextVideoTarget.tiny_model(image_size=336), byte_tokenizer("llava_onevision"), 144
    pytest.fail(f"no test model for pipelines of target {name!r}: add one to _target_model")


@pytest.mark.slow
@pytest.mark.parametrize("path", TARGETED, ids=[p.stem for p in TARGETED])
def test_target_pipeline_file_runs(path: Path, clip: np.ndarray) -> None:
    pipe = Pipeline.from_yaml(path)
    model, tokenizer, per_frame = _target_model(pipe.config.target, pipe.config.target_options)
    with pipe.apply(model) as bound:
        assert bound.target.name == pipe.config.target
        stream = bound.stream(tokenizer=tokenizer)
        stats = stream.add_frames(clip)
        stats += stream.flush()
        assert sum(c.frames for c in stats) == len(clip)
        for c in stats:
            frames = bound.target.token_frames(c.frames)
            planned = bound.planned_tokens(Stage.PRE_PREFILL, c.frames)
            if bound.by_stage[Stage.POST_VIT]:
                assert (
                    c.pre_prefill[0] == c.post_vit[1] <= per_frame * frames
                )  # selection replaced the pooler
            else:
                assert c.pre_prefill[0] == per_frame * frames
                assert planned is None or c.pre_prefill[1] == planned  # None: the count follows the chunk
        answer = stream.ask("What is happening?", max_new_tokens=3)
        assert len(answer.token_ids) <= 3
