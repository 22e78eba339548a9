"""kv_cache at build time: one-line errors that name the bad field (or both sides) and the fix."""

from __future__ import annotations

import pytest

from tokencompress import Pipeline, Stage
from tokencompress.api.errors import BudgetError, CompatibilityError, ConfigError
from tokencompress.pipeline.kv_placement import kv_build
from tokencompress.plugins.registry import Registry
from tokencompress.targets.llava.llava_onevision import LlavaOnevisionTarget


def bind(model, kv, fpc=1, **stages):
    stages["kv_cache"] = [kv] if isinstance(kv, dict) else kv
    return Pipeline.from_dict({"stream": {"frames_per_chunk": fpc}, "stages": stages}).bind(model)


@pytest.mark.parametrize(
    ("kv", "fpc", "error", "needle"),
    [
        (
            {"strategy": "rekv", "n_local": 8, "topk": 1},
            1,
            BudgetError,
            r"rekv.n_local = 8 is smaller than one frame's 16",
        ),
        ({"strategy": "rekv", "n_local": 32, "topk": 1}, 3, BudgetError, r"one chunk \(3 frames x 16"),
        (
            {"strategy": "rekv", "n_local": 64, "topk": 5},
            1,
            BudgetError,
            r"rekv.topk = 5 .* exceed n_local = 64",
        ),
        (
            {"strategy": "rekv", "n_local": 64, "topk": 3, "chunk_size": 2},
            1,
            BudgetError,
            "multiple of chunk_size",
        ),
        ({"strategy": "rekv", "block_size": 12}, 1, BudgetError, r"block_size = 12 .* 16 tokens a frame"),
        ({"strategy": "sliding_window", "n_local": 15}, 1, BudgetError, r"sliding_window.n_local = 15 .* 16"),
    ],
)
def test_impossible_kv_parameters_are_refused(tiny_llava_ov, kv, fpc, error, needle):
    with pytest.raises(error, match=needle) as info:
        bind(tiny_llava_ov, kv, fpc)
    assert "\n" not in str(info.value)


def test_block_size_follows_the_pruner(tiny_llava_ov):
    bound = bind(
        tiny_llava_ov,
        {"strategy": "rekv", "n_local": 60, "topk": 4},
        pre_prefill=[{"strategy": "stc_pruner", "tokens_per_frame": 6}],
    )
    assert bound.kv_build.tokens_per_frame == 6
    with pytest.raises(BudgetError, match="block_size = 16 does not match the 6 tokens"):
        bind(
            tiny_llava_ov,
            {"strategy": "rekv", "n_local": 60, "topk": 4, "block_size": 16},
            pre_prefill=[{"strategy": "stc_pruner", "tokens_per_frame": 6}],
        )


def test_topk_of_zero_is_a_field_error():
    with pytest.raises(ConfigError, match=r"stages.kv_cache\[0\].topk"):
        Pipeline.from_dict({"stages": {"kv_cache": [{"strategy": "rekv", "topk": 0}]}})


def test_a_variable_count_per_frame_is_refused_naming_the_pruner(tiny_llava_ov):
    vidcom2 = [{"strategy": "vidcom2", "retention_ratio": 0.5}]
    with pytest.raises(CompatibilityError, match="'vidcom2' keeps a data-dependent number per frame"):
        bind(tiny_llava_ov, {"strategy": "rekv", "n_local": 64, "topk": 2}, fpc=2, pre_prefill=vidcom2)
    # one frame per chunk: its budget is exact, every frame keeps the same count
    assert (
        bind(
            tiny_llava_ov, {"strategy": "rekv", "n_local": 64, "topk": 2}, pre_prefill=vidcom2
        ).kv_build.tokens_per_frame
        == 8
    )


def test_two_kv_strategies_are_refused(tiny_llava_ov):
    with pytest.raises(CompatibilityError, match="at most one strategy"):
        bind(tiny_llava_ov, [{"strategy": "rekv"}, {"strategy": "sliding_window"}])


def test_kv_strategy_under_another_stage_is_refused():
    with pytest.raises(ConfigError, match="move it under stages.kv_cache"):
        Pipeline.from_dict({"stages": {"pre_prefill": [{"strategy": "rekv"}]}})


@pytest.mark.parametrize("name", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_rekv_on_qwen_binds_with_the_m_rope_memory(name):
    """ReKV runs on M-RoPE (retrieved frames re-placed, tokencompress.api.memory_positions)."""
    model = Registry().target(name).tiny_model()
    bind(model, {"strategy": "rekv", "n_local": 20000})


class _NoProjections(LlavaOnevisionTarget):
    """A target that lists rekv but cannot hand out pre-RoPE projections."""

    name = "no_projections"
    provides = {**LlavaOnevisionTarget.provides, Stage.KV_CACHE: frozenset()}


def test_rekv_without_pre_rope_projections_is_refused(tiny_llava_ov):
    config = Pipeline.from_dict({"stages": {"kv_cache": [{"strategy": "rekv"}]}}).config
    with pytest.raises(
        CompatibilityError,
        match="needs pre_rope_projections at kv_cache, which target 'no_projections'",
    ):
        kv_build(config, _NoProjections(tiny_llava_ov), (16, None))


def test_schema_lists_the_kv_cache_strategies():
    from tokencompress.pipeline.config import json_schema

    text = str(json_schema(Registry()))
    assert "kv_cache" in text and "ReKVStep" in text and "SlidingWindowStep" in text
