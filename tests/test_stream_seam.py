"""The stream/pipeline seam: a stream calls one typed method per chunk and formats text as its target says."""

from __future__ import annotations

import numpy as np
import torch

from tokencompress import Pipeline
from tokencompress.chunk_seam import ChunkTiming, EncodedChunk, StageCount, StreamPosition
from tokencompress.types import ChatFormat, Stage

STC = {
    "stream": {"frames_per_chunk": 1},
    "stages": {
        "pre_vit_block": [{"strategy": "stc_cacher", "update_token_ratio": 0.5, "cache_interval": 2}],
        "pre_prefill": [{"strategy": "stc_pruner", "tokens_per_frame": 6}],
    },
}


def test_encode_chunk_returns_tokens_chunk_and_typed_timing(tiny_llava_ov, frames):
    with Pipeline.from_dict(STC).apply(tiny_llava_ov) as bound:
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
    with Pipeline.from_dict(STC).apply(tiny_llava_ov) as bound:
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


class _Recorder:
    """A tokenizer stand-in that records the text a stream asks it to encode."""

    def __init__(self):
        self.texts: list[str] = []

    def __len__(self) -> int:
        return 100

    def encode(self, text, add_special_tokens=False):
        self.texts.append(text)
        return [1 + (ord(c) % 50) for c in text[:8]] or [1]

    def convert_tokens_to_ids(self, token):
        return {"<stop-a>": 7, "<stop-b>": 9}.get(token, -1)

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


def test_stream_uses_its_targets_chat_format(tiny_llava_ov, frames, monkeypatch):
    """No prompt text or stop token is hard-coded in the stream: the target's format decides."""
    fmt = ChatFormat(prefix="[SYS]", question="<Q>{question}</Q>", stop_tokens=("<stop-a>", "<stop-b>"))
    with Pipeline.from_dict({"stages": {}}).apply(tiny_llava_ov) as bound:
        monkeypatch.setattr(bound.target, "chat_format", lambda: fmt)
        tok = _Recorder()
        stream = bound.stream(tokenizer=tok)
        stream.add_frames(frames[:1])
        seen = {}
        original = bound.target.greedy_decode

        def capture(state, logits, max_new_tokens, stop_ids):
            seen["stop"] = stop_ids
            return original(state, logits, max_new_tokens, stop_ids)

        monkeypatch.setattr(bound.target, "greedy_decode", capture)
        stream.ask("why {braces}?", max_new_tokens=2)
    assert tok.texts[0] == "[SYS]"
    assert tok.texts[1] == "<Q>why {braces}?</Q>"
    assert seen["stop"] == {7, 9}


def test_default_chat_format_is_chatml(tiny_llava_ov):
    with Pipeline.from_dict({"stages": {}}).apply(tiny_llava_ov) as bound:
        fmt = bound.target.chat_format()
    assert fmt.prefix.startswith("<|im_start|>system\n") and fmt.prefix.endswith("<|im_start|>user\n")
    assert fmt.question_text("Q?") == "\nQ?<|im_end|>\n<|im_start|>assistant\n"
    assert "<|im_end|>" in fmt.stop_tokens


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
