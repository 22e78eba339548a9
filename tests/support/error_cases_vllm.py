"""Cases of docs/errors.md: serving with vLLM (plugins/tokencompress-vllm, its vLLM-free part)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

from tests.support.errors import Ctx, case
from tests.support.paths import ROOT
from tokencompress import Pipeline

sys.path.insert(0, str(ROOT / "plugins" / "tokencompress-vllm" / "src"))

from tokencompress_vllm.plan import Geometry, ServingPlan  # noqa: E402
from tokencompress_vllm.serving import configure  # noqa: E402

QWEN = Geometry("qwen2_5_vl", merge=2, temporal_patch=2, llm_dim=64)
STREAM = {"frames_per_chunk": 4, "fps": 2.0}


def _plan(stages: dict, stream: dict = STREAM) -> ServingPlan:
    return ServingPlan(Pipeline.from_dict({"name": "p", "stream": stream, "stages": stages}).config, QWEN)


def _engine(c: Ctx, architecture: str, settings: object, rate: float | None = None) -> SimpleNamespace:
    path = c.tmp / "p.yaml"
    path.write_text(
        "name: p\nstream: {frames_per_chunk: 4}\nstages:\n  pre_prefill: [{strategy: stc_pruner}]\n"
    )
    vision = SimpleNamespace(spatial_merge_size=2, temporal_patch_size=2)
    model = SimpleNamespace(
        hf_config=SimpleNamespace(vision_config=vision, hidden_size=64),
        architecture=architecture,
        multimodal_config=SimpleNamespace(video_pruning_rate=rate),
    )
    if settings is None:
        settings = {"pipeline": str(path)}
    return SimpleNamespace(additional_config={"tokencompress": settings}, model_config=model)


@case("vllm-kv-cache-stage")
def _(c: Ctx):
    return c.api(lambda: _plan({"kv_cache": [{"strategy": "sliding_window"}]}))


@case("vllm-encoder-block-stage")
def _(c: Ctx):
    return c.api(lambda: _plan({"pre_vit_block": [{"strategy": "stc_cacher"}]}))


@case("vllm-encoder-probe")
def _(c: Ctx):
    return c.api(lambda: _plan({"post_vit": [{"strategy": "visionzip", "dominant": 42, "contextual": 7}]}))


@case("vllm-data-dependent-count")
def _(c: Ctx):
    return c.api(lambda: _plan({"post_vit": [{"strategy": "dtd", "threshold": 0.5}]}))


@case("vllm-odd-frames-per-chunk")
def _(c: Ctx):
    return c.api(lambda: _plan({"pre_prefill": [{"strategy": "stc_pruner"}]}, {"frames_per_chunk": 1}))


@case("vllm-unknown-architecture")
def _(c: Ctx):
    return c.api(lambda: configure(_engine(c, "LlavaForConditionalGeneration", None)))


@case("vllm-settings-unknown-key")
def _(c: Ctx):
    return c.api(lambda: configure(_engine(c, "Qwen2_5_VLForConditionalGeneration", {"pipline": "p.yaml"})))


@case("vllm-two-prunings")
def _(c: Ctx):
    return c.api(lambda: configure(_engine(c, "Qwen2_5_VLForConditionalGeneration", None, 0.5)))


@case("vllm-pipeline-not-found")
def _(c: Ctx):
    missing = str(Path(c.tmp) / "missing.yaml")
    return c.api(lambda: configure(_engine(c, "Qwen2_5_VLForConditionalGeneration", {"pipeline": missing})))
