"""sliding_window on Qwen2-VL / Qwen2.5-VL: 3-D M-RoPE positions renumbered by one shift on all axes."""

from __future__ import annotations

import pytest
import torch

from tests.support.models import random_frames
from tokencompress import Pipeline
from tokencompress.targets.qwen.qwen2_vl import Qwen2_5_VLTarget, Qwen2VLTarget

pytestmark = pytest.mark.slow

TARGETS = [Qwen2VLTarget, Qwen2_5_VLTarget]
PREFIX = torch.tensor([11, 12, 13, 14, 15])
QUESTION = torch.tensor([21, 22, 23])
FRAMES = random_frames(12, seed=8)


@pytest.fixture(scope="module", params=TARGETS, ids=[t.name for t in TARGETS])
def model(request):
    return request.param.tiny_model(seed=1)


def pipe(kv=None) -> Pipeline:
    return Pipeline.from_dict(
        {
            "stream": {"frames_per_chunk": 2, "fps": 2},
            "target_options": {"max_pixels": 112 * 112},  # 16 LLM tokens per 2-frame slice, + 2 delimiters
            "stages": {"kv_cache": [kv]} if kv else {},
        }
    )


def answer(model, pipeline, crop: int | None = None):
    with pipeline.apply(model) as bound:
        s = bound.stream()
        s.prefill_ids(PREFIX)
        for i in range(0, len(FRAMES), 2):
            s.add_frames(FRAMES[i : i + 2])
            if crop is not None and s.llm.length > crop:  # drop old tokens, keep their positions
                for layer in s.llm.cache.layers:
                    layer.keys, layer.values = layer.keys[:, :, -crop:], layer.values[:, :, -crop:]
        return s.ask(QUESTION, max_new_tokens=3), s


def test_window_larger_than_the_stream_answers_like_the_plain_pipeline(model):
    plain, _ = answer(model, pipe())
    got, _ = answer(model, pipe({"strategy": "sliding_window", "n_local": 4096}))
    assert torch.equal(got.first_logits, plain.first_logits) and got.token_ids == plain.token_ids


def test_renumbered_window_answers_like_the_same_window_at_its_old_positions(model):
    got, s = answer(model, pipe({"strategy": "sliding_window", "n_local": 40, "sink_tokens": 0}))
    want, ref = answer(model, pipe(), crop=40)
    torch.testing.assert_close(got.first_logits, want.first_logits, atol=1e-4, rtol=1e-4)
    assert got.token_ids == want.token_ids
    assert s.llm.next_position < ref.llm.next_position  # positions were moved down


def test_positions_stay_bounded_with_sinks(model):
    _, s = answer(model, pipe({"strategy": "sliding_window", "n_local": 40}))
    assert s.llm.length == 5 + 40
    assert s.llm.next_position <= 5 + 40 + 18
    assert s.kv.positions.shape == (3, 5 + 40) and int(s.kv.positions.min()) >= 0
