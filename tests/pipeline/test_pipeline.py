"""Pipelines: binding places every strategy once, apply() is reversible, streams need the hooks installed."""

from __future__ import annotations

import pytest
import torch

from tests.support.pipelines import STC, pipeline
from tokencompress import CompatibilityError, Stage
from tokencompress.pipeline.placement import place_strategies

PREFIX = torch.tensor([11, 12, 13, 14, 15])
QUESTION = torch.tensor([21, 22, 23])


def test_a_moved_strategy_runs_first_at_its_new_stage_and_is_noted(tiny_llava_ov):
    """VisionZip (post_vit) selects on LLaVA-OV's pooled grid: it runs at pre_prefill, ahead of
    that stage's own pruner, and the move is reported once."""
    pipe = pipeline(
        {
            "post_vit": [{"strategy": "visionzip", "dominant": 6, "contextual": 2}],
            "pre_prefill": [{"strategy": "stc_pruner", "tokens_per_frame": 4}],
        }
    )
    bound = pipe.bind(tiny_llava_ov)
    assert [s.name for s in bound.by_stage[Stage.PRE_PREFILL]] == ["visionzip", "stc_pruner"]
    assert bound.by_stage[Stage.POST_VIT] == []
    assert len(bound.notes) == 1 and "visionzip" in bound.notes[0] and "pre_prefill" in bound.notes[0]
    # the stream's states stay in YAML order, whatever stage a strategy runs at
    assert [s.name for s in bound.steps] == ["visionzip", "stc_pruner"]


def test_placement_is_the_one_the_bound_pipeline_uses(tiny_llava_ov):
    pipe = pipeline(STC)
    bound = pipe.bind(tiny_llava_ov)
    placed = place_strategies(pipe.config, bound.target)
    assert {k: [s.name for s in v] for k, v in placed.by_stage.items()} == {
        k: [s.name for s in v] for k, v in bound.by_stage.items()
    }


def test_a_layer_computing_strategy_must_be_last_of_its_stage(tiny_llava_ov):
    stages = {
        "pre_vit_block": [
            {"strategy": "stc_cacher", "update_token_ratio": 0.25, "cache_interval": 2},
            {"strategy": "tome", "r": 2},
        ]
    }
    with pytest.raises(
        CompatibilityError, match=r"stages.pre_vit_block\[0\].*both compute the whole encoder layer"
    ):
        pipeline(stages).bind(tiny_llava_ov)


def test_apply_exit_restores_model_bit_for_bit(tiny_llava_ov, frames):
    model = tiny_llava_ov
    pipe = pipeline(STC)
    target = pipe.bind(model).target
    pixels = target.preprocess(frames[:2])[None]
    ids = torch.cat([PREFIX, torch.full((33,), 999), QUESTION])[None]

    def run():
        with torch.inference_mode():
            return model(input_ids=ids, pixel_values_videos=pixels).logits

    layers = target.vit_layers()
    before = run()
    with pipe.apply(model) as bound:
        assert all("forward" in layer.__dict__ for layer in layers)
        inside = run()  # no stream active: stock forwards
        s = bound.stream()
        s.add_frames(frames)
    after = run()
    assert not any("forward" in layer.__dict__ for layer in layers)
    assert torch.equal(before, inside) and torch.equal(before, after)


def test_stream_outside_apply_is_refused_when_hooks_are_needed(tiny_llava_ov, frames):
    bound = pipeline(STC).bind(tiny_llava_ov)
    with pytest.raises(RuntimeError, match="apply"):
        bound.stream().add_frames(frames[:1])
    # a pipeline without encoder hooks needs no apply()
    plain = pipeline({"pre_prefill": STC["pre_prefill"]}).bind(tiny_llava_ov)
    assert [c.pre_prefill for c in plain.stream().add_frames(frames[:2])] == [(16, 6), (16, 6)]
