"""The block patch: per-thread routing of encoder layers, refused nesting, nothing left behind."""

from __future__ import annotations

import threading

import pytest
import torch

from tests.support.pipelines import STC, pipeline
from tokencompress import TokenCompressError


def test_other_threads_see_the_stock_model_during_a_chunk(tiny_llava_ov, frames):
    """A chunk's strategies apply to the thread that runs it, never to another user of the model."""
    model = tiny_llava_ov
    tower = model.model.vision_tower
    pipe = pipeline(STC)
    target = pipe.bind(model).target
    pixels = target.preprocess(list(frames[:1]))
    with torch.inference_mode():
        plain = tower(pixels).last_hidden_state
    inside, started, release = {}, threading.Event(), threading.Event()
    with pipe.apply(model) as bound:
        s = bound.stream()
        s.add_frames(frames[:1])  # reference chunk: the cache now holds frame 0

        def hold_chunk() -> None:
            with bound.patch.chunk(bound.block_states(s.states), s.history and _next_chunk(s)):
                started.set()
                release.wait(10)

        worker = threading.Thread(target=hold_chunk)
        worker.start()
        started.wait(10)
        try:
            with torch.inference_mode():
                inside["out"] = tower(pixels).last_hidden_state
        finally:
            release.set()
            worker.join()
    assert torch.equal(inside["out"], plain)


def _next_chunk(stream):
    from tokencompress import ChunkInfo

    return ChunkInfo(stream.chunks_done, stream.frames_seen, 1)


def test_nested_apply_is_refused_and_leaves_no_hooks(tiny_llava_ov):
    stages = {**STC, "post_vit": [{"strategy": "visionzip", "dominant": 4, "contextual": 2}]}
    pipe = pipeline(stages)
    layers = pipe.bind(tiny_llava_ov).target.vit_layers()
    with pipe.apply(tiny_llava_ov):
        with pytest.raises(TokenCompressError, match="already inside"):
            with pipe.apply(tiny_llava_ov):
                pass
    assert not any(layer._forward_pre_hooks for layer in layers)
    assert not any("forward" in layer.__dict__ for layer in layers)
