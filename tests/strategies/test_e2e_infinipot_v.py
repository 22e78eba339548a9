"""infinipot_v end to end on the tiny LLaVA-OV (1-D RoPE) and Qwen2-VL / Qwen2.5-VL (M-RoPE).

A budget larger than the stream changes nothing; the memory stays under its budget after the first
compression; kept tokens are rows of the uncompressed cache (keys keep their rotation: positions are
never renumbered) and new chunks continue at the uncompressed stream's positions; a question leaves
the memory as it was.
"""

from __future__ import annotations

import pytest
import torch

from tests.support.models import random_frames
from tokencompress import Pipeline
from tokencompress.targets.qwen.qwen2_vl import Qwen2_5_VLTarget, Qwen2VLTarget

pytestmark = pytest.mark.slow

PREFIX = torch.tensor([11, 12, 13, 14, 15])
QUESTION = torch.tensor([21, 22, 23])
FRAMES = random_frames(12, seed=8)
SMALL = {"strategy": "infinipot_v", "budget_frames": 3, "query_ratio": 0.34}
"""Three frames' worth: compressed to two before every chunk from the fourth frame on (R = 1)."""


def _llava():
    from tests.support.models import build_tiny_llava_ov

    return build_tiny_llava_ov()


MODELS = {
    "llava_onevision": (_llava, 1, {}, 0),
    "qwen2_vl": (lambda: Qwen2VLTarget.tiny_model(seed=1), 2, {"max_pixels": 112 * 112}, 2),
    "qwen2_5_vl": (lambda: Qwen2_5_VLTarget.tiny_model(seed=1), 2, {"max_pixels": 112 * 112}, 2),
}
"""name: (model, frames per chunk (one token frame), target options, delimiters per chunk)."""


@pytest.fixture(scope="module", params=sorted(MODELS))
def setup(request):
    make, fpc, options, extra = MODELS[request.param]
    return make(), fpc, options, extra


def pipe(setup, kv=None) -> Pipeline:
    _, fpc, options, _ = setup
    return Pipeline.from_dict(
        {
            "stream": {"frames_per_chunk": fpc, "fps": 2},
            "target_options": options,
            "stages": {"kv_cache": [kv]} if kv else {},
        }
    )


def chunks(fpc: int):
    return [FRAMES[i : i + fpc] for i in range(0, len(FRAMES), fpc)]


def test_budget_larger_than_the_stream_answers_like_the_plain_pipeline(setup):
    model, fpc = setup[0], setup[1]
    answers = []
    for kv in (None, {"strategy": "infinipot_v", "budget_frames": 64}):
        with pipe(setup, kv).apply(model) as bound:
            s = bound.stream()
            s.prefill_ids(PREFIX)
            for c in chunks(fpc):
                s.add_frames(c)
            answers.append(s.ask(QUESTION, max_new_tokens=3))
    assert torch.equal(answers[0].first_logits, answers[1].first_logits)
    assert answers[0].token_ids == answers[1].token_ids


def _rows_of(part: torch.Tensor, full: torch.Tensor) -> bool:
    """Every row of ``part`` ``[kvh, n, d]`` is a row of the same head in ``full`` ``[kvh, m, d]``."""
    return bool((part[:, :, None] == full[:, None]).all(-1).any(-1).all())


def test_memory_stays_bounded_and_kept_tokens_keep_their_positions(setup):
    model, fpc, _, extra = setup
    with pipe(setup).apply(model) as plain_bound, pipe(setup, SMALL).apply(model) as bound:
        plain, s = plain_bound.stream(), bound.stream()
        for x in (plain, s):
            x.prefill_ids(PREFIX)
        tpf = bound.kv_build.tokens_per_frame
        budget = len(PREFIX) + 3 * tpf + extra
        for i, c in enumerate(chunks(fpc)):
            before = [layer.keys[0].clone() for layer in plain.llm.cache.layers]
            (stats,) = s.add_frames(c)
            plain.add_frames(c)
            assert s.llm.next_position == plain.llm.next_position  # never renumbered
            if i < 3:
                assert s.kv.compressions == 0 and s.llm.length == plain.llm.length
                continue
            assert s.kv.compressions == i - 2
            assert stats.cache_tokens == s.llm.length <= budget
            if i == 3:  # the first compression: a per-head subset of the uncompressed cache
                for layer, full in zip(s.llm.cache.layers, before, strict=True):
                    assert torch.equal(layer.keys[0, :, : len(PREFIX)], full[:, : len(PREFIX)])
                    assert _rows_of(layer.keys[0, :, len(PREFIX) : len(PREFIX) + 2 * tpf], full)
            assert stats.kv_ms > 0.0  # the compression ran between prefills, timed on its own
            assert stats.total_ms >= stats.prefill_ms + stats.kv_ms + stats.vit_ms
        stats = s.kv.memory_stats()
        assert stats["compressions"] == len(chunks(fpc)) - 3 and stats["visual_frames"] == 3
        assert stats["dropped_per_layer"] == [plain.llm.length - s.llm.length] * len(s.llm.cache.layers)
        kept = [(layer.keys.clone(), layer.values.clone()) for layer in s.llm.cache.layers]
        s.ask(QUESTION, max_new_tokens=3)
        for (k, v), layer in zip(kept, s.llm.cache.layers, strict=True):
            assert torch.equal(layer.keys, k) and torch.equal(layer.values, v)
