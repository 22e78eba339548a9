"""Streams: failed questions and bad frames leave the stream as it was; text framed by the target's chat format."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.support.models import random_frames
from tests.support.pipelines import STC, pipeline
from tokencompress import ConfigError, Pipeline, VideoError
from tokencompress.api.types import ChatFormat


def test_failed_question_leaves_the_cache_as_it_was(tiny_llava_ov, frames, monkeypatch):
    with pipeline(STC, target_options={"newline": True}).apply(tiny_llava_ov) as bound:
        s = bound.stream()
        s.add_frames(frames[:2])
        length, position = s.llm.length, s.llm.next_position
        with pytest.raises(ConfigError, match="outside the model's vocabulary"):
            s.ask(torch.tensor([5, 10**6]))  # refused before anything is prefilled
        assert (s.llm.length, s.llm.next_position) == (length, position)

        def out_of_memory(*args):
            raise MemoryError("simulated")

        with monkeypatch.context() as m:  # a failure mid-answer, after the question was prefilled
            m.setattr(bound.target, "greedy_decode", out_of_memory)
            with pytest.raises(MemoryError):
                s.ask(torch.tensor([5, 10]))
        assert (s.llm.length, s.llm.next_position) == (length, position)
        with pytest.raises(RuntimeError, match="tokenizer"):
            s.ask("no tokenizer on this stream")
        assert (s.llm.length, s.llm.next_position) == (length, position)


def test_bad_frames_are_refused_before_any_state_moves(tiny_llava_ov, frames):
    with pipeline(STC).apply(tiny_llava_ov) as bound:
        ref, s = bound.stream(), bound.stream()
        ref_stats = ref.add_frames(frames[:3])
        for bad in (frames[:1].astype(np.float32), frames[:1, :, :, :2], frames[0, :, :, 0]):
            with pytest.raises(VideoError, match="frames must be"):
                s.add_frames(bad)
        assert s.chunks_done == 0 and s.states[0].chunks_seen == 0
        stats = s.add_frames(frames[:3])
        assert [c.pre_prefill for c in stats] == [c.pre_prefill for c in ref_stats]
        assert torch.equal(
            s.ask(torch.tensor([5]), 1).first_logits, ref.ask(torch.tensor([5]), 1).first_logits
        )


def test_frame_size_may_change_inside_a_chunk(tiny_llava_ov):
    small, large = random_frames(1, h=40, w=50), random_frames(1, seed=1, h=60, w=80)
    with pipeline(STC, stream={"frames_per_chunk": 2}).apply(tiny_llava_ov) as bound:
        s = bound.stream()
        assert s.add_frames(small) == []
        (stats,) = s.add_frames(large)
        assert stats.frames == 2 and stats.pre_prefill == (32, 12)


def test_pruner_after_an_adaptive_strategy(tiny_llava_ov):
    stages = {
        "pre_prefill": [
            {"strategy": "vidcom2", "retention_ratio": 0.5},
            {"strategy": "stc_pruner", "tokens_per_frame": 4},
        ]
    }
    with pipeline(stages, stream={"frames_per_chunk": 4}).apply(tiny_llava_ov) as bound:
        (stats,) = bound.stream().add_frames(random_frames(4, seed=3))
    assert stats.pre_prefill[1] <= 16 and stats.pre_prefill[1] >= 4


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
