"""The stream/pipeline seam: a stream calls one typed method per chunk and formats text as its target says."""

from __future__ import annotations

import numpy as np
import torch

from tests.support.pipelines import STC, pipeline
from tokencompress import Pipeline
from tokencompress.api.types import Stage
from tokencompress.stream.seam import ChunkTiming, EncodedChunk, StageCount, StreamPosition

STC_HALF = {
    **STC,
    "pre_vit_block": [{"strategy": "stc_cacher", "update_token_ratio": 0.5, "cache_interval": 2}],
}
"""STC with the cacher recomputing half the tokens on its refresh frames."""


def test_encode_chunk_returns_tokens_chunk_and_typed_timing(tiny_llava_ov, frames):
    with pipeline(STC_HALF).apply(tiny_llava_ov) as bound:
        states = bound.new_states()
        out = bound.encode_chunk(states, list(frames[:1]), StreamPosition(0, 0, 0))
    assert isinstance(out, EncodedChunk)
    assert out.chunk.index == 0 and out.chunk.num_frames == 1
    assert out.tokens.count == 6
    assert out.timing.tokens(Stage.PRE_PREFILL) == (16, 6)
    assert out.timing.tokens(Stage.POST_VIT) == (64, 64)
    assert out.timing.vit_s > 0 and out.timing.preprocess_s >= 0
    assert out.timing.compress_s == sum(c.seconds for c in out.timing.stages.values())


def test_stream_stats_come_from_the_seam(tiny_llava_ov, frames):
    """What a stream reports equals what the seam measured, field by field."""
    seen: list[EncodedChunk] = []
    with pipeline(STC_HALF).apply(tiny_llava_ov) as bound:
        original = bound.encode_chunk

        def spy(*args, **kwargs):
            seen.append(original(*args, **kwargs))
            return seen[-1]

        bound.encode_chunk = spy
        stream = bound.stream()
        stats = stream.add_frames(frames[:3])
    assert [s.chunk for s in stats] == [0, 1, 2]
    for s, e in zip(stats, seen, strict=True):
        assert s.pre_prefill == e.timing.tokens(Stage.PRE_PREFILL)
        assert s.vit_ms == 1e3 * e.timing.vit_s
        assert s.compress_ms == 1e3 * e.timing.compress_s
        assert e.chunk.first_frame == s.first_frame


def test_missing_stage_reads_as_zero_counts():
    timing = ChunkTiming(0.0, 1.0, {Stage.PRE_PREFILL: StageCount(10, 4, 0.5)})
    assert timing.tokens(Stage.POST_VIT) == (0, 0)
    assert timing.tokens(Stage.PRE_PREFILL) == (10, 4)
    assert timing.compress_s == 0.5


def test_encode_chunk_leaves_counters_to_the_stream(tiny_llava_ov, frames):
    """The bound pipeline keeps no stream data: two calls at one position give the same tokens."""
    pipe = Pipeline.from_dict(
        {"stages": {"pre_prefill": [{"strategy": "stc_pruner", "tokens_per_frame": 5}]}}
    )
    with pipe.apply(tiny_llava_ov) as bound:
        a = bound.encode_chunk(bound.new_states(), list(frames[:1]), StreamPosition(3, 7, 7))
        b = bound.encode_chunk(bound.new_states(), list(frames[:1]), StreamPosition(3, 7, 7))
    assert a.chunk.index == 3 and a.chunk.first_frame == 7
    assert torch.equal(a.tokens.tokens, b.tokens.tokens)
    assert np.array_equal(a.tokens.frame.numpy(), np.full(5, 7))
