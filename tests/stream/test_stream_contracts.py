"""A stream's contract with its callers: one thread at a time, and bad arguments refused in one line
before anything moves (questions, token ids, answer lengths, frame indices, frames)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.support.models import random_frames
from tests.support.videos import write_segment
from tokencompress import Pipeline, VideoError
from tokencompress.api.errors import ConfigError, StreamBusyError

WAIT = 60  # seconds a thread waits for the other before the test fails (never reached when it passes)
BUSY = "this stream is in use by another thread; a stream takes one caller at a time"


def _bound(model: Any, stages: dict | None = None, **stream: Any):
    return Pipeline.from_dict({"stages": stages or {}, "stream": stream}).apply(model)


class Inside:
    """Holds the first chunk a stream encodes inside the stream until the test lets it go.

    Both sides meet at a barrier inside that chunk (so the other caller is sure the stream is
    busy), then the held thread waits for ``release``. Later chunks run through."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, bound: Any) -> None:
        self.met = threading.Barrier(2, timeout=WAIT)
        self.release = threading.Event()
        self._first = [True]
        real = bound.encode_chunk

        def held(*args: Any, **kwargs: Any) -> Any:
            if self._first.pop() if self._first else False:
                self.met.wait()
                assert self.release.wait(WAIT)
            return real(*args, **kwargs)

        monkeypatch.setattr(bound, "encode_chunk", held)

    def run(self, work: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
        """``work()`` on a thread that stops inside its first chunk; returns once it is there."""
        result: dict[str, Any] = {}

        def target() -> None:
            try:
                result["value"] = work()
            except BaseException as exc:  # reported by the test, not lost in the thread
                result["error"] = exc

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        self.met.wait()
        return thread, result

    def finish(self, thread: threading.Thread, result: dict[str, Any]) -> Any:
        self.release.set()
        thread.join(WAIT)
        assert not thread.is_alive() and "error" not in result, result
        return result["value"]


def test_a_second_thread_is_refused_while_a_call_runs(tiny_llava_ov, monkeypatch):
    """Two threads feeding one stream used to interleave chunks (12 frames in, 13 chunks out and
    a cache of neither); now the second caller is refused at once and the first call goes on."""
    frames = random_frames(4)
    with _bound(tiny_llava_ov) as bound:
        s, ref = bound.stream(), bound.stream()
        inside = Inside(monkeypatch, bound)
        thread, result = inside.run(lambda: s.add_frames(frames[:2]))
        try:
            calls = {
                "add_frames": lambda: s.add_frames(frames[2:]),
                "flush": s.flush,
                "ask": lambda: s.ask(torch.tensor([5]), 1),
                "prefill_ids": lambda: s.prefill_ids(torch.tensor([5])),
                "reset": s.reset,
                "encode_only": lambda: s.encode_only(frames[:1]),
                "bytes_by_device": s.bytes_by_device,
            }
            for name, call in calls.items():
                with pytest.raises(StreamBusyError, match=BUSY):
                    call()
                assert s._lock.held, name
        finally:
            stats = inside.finish(thread, result)
        assert [c.chunk for c in stats] == [0, 1] and s.chunks_done == 2 and s._pending == []
        ref.add_frames(frames[:2])  # the refused calls left no trace
        assert (s.llm.length, s.frames_seen) == (ref.llm.length, ref.frames_seen)
        assert len(s.add_frames(frames[2:])) == 2  # and the stream is free again, for any thread
        assert not s._lock.held


def test_one_thread_may_call_its_stream_again_between_yields(tiny_llava_ov, tmp_path: Path):
    """``add_video`` holds the stream for its thread from the first chunk to the last: that thread
    may ``ask`` between chunks; another thread is refused until the generator is done or closed."""
    video = tmp_path / "v.mp4"
    write_segment(video, 64, 48, 6, codec="mpeg4")
    with _bound(tiny_llava_ov) as bound:
        s = bound.stream()
        chunks = s.add_video(video, fps=None)
        assert not s._lock.held  # nothing runs before the first next()
        first = next(chunks)
        assert first.chunk == 0 and s.ask(torch.tensor([5]), 1).token_ids  # the same thread: fine
        errors: list[BaseException] = []

        def other() -> None:
            try:
                s.add_frames(random_frames(1))
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=other)
        thread.start()
        thread.join(WAIT)
        assert len(errors) == 1 and isinstance(errors[0], StreamBusyError)
        chunks.close()
        assert not s._lock.held
        thread = threading.Thread(target=other)
        thread.start()
        thread.join(WAIT)
        assert len(errors) == 1 and s.chunks_done == 2  # the other thread's frame went in


# ----------------------------------------------------------------- arguments
def _state(s: Any) -> tuple:
    return (s.llm.length, s.llm.next_position, s.chunks_done, len(s._pending), s._prefixed)


BAD_ASK = [
    ((torch.tensor([5]),), {"max_new_tokens": -5}, r"ask\(max_new_tokens=-5\): must be an integer >= 1"),
    ((torch.tensor([5]),), {"max_new_tokens": 0}, r"ask\(max_new_tokens=0\)"),
    ((torch.tensor([5]),), {"max_new_tokens": True}, r"ask\(max_new_tokens=True\)"),
    ((torch.tensor([5]),), {"max_new_tokens": 2.0}, r"ask\(max_new_tokens=2.0\)"),
    ((torch.tensor([5.0]),), {}, r"must be an integer tensor, got torch.float32"),
    ((torch.tensor([True]),), {}, r"must be an integer tensor, got torch.bool"),
    ((torch.tensor([5, 10**6]),), {}, r"token id 1000000 is outside the model's vocabulary \(0\.\.\d+\)"),
    ((torch.tensor([-1, 5]),), {}, r"token id -1 is outside the model's vocabulary"),
    ((torch.tensor([], dtype=torch.long),), {}, r"token ids are empty"),
    ((torch.tensor([[5, 6]]),), {}, r"must be a 1-D tensor \[L\], got shape \(1, 2\)"),
    ((torch.tensor(5),), {}, r"must be a 1-D tensor \[L\], got shape \(\)"),
    (([5, 6],), {}, r"expected a 1-D tensor of token ids, got list"),
    ((torch.empty(2, dtype=torch.long, device="meta"),), {}, r"on the meta device"),
    ((" ",), {}, r"the question is empty"),
    ((torch.tensor([5]),), {"frames": [0]}, r"external retrieval needs a kv_cache strategy"),
]


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    BAD_ASK,
    ids=[
        "tokens-negative",
        "tokens-zero",
        "tokens-bool",
        "tokens-float",
        "ids-float",
        "ids-bool",
        "ids-past-vocab",
        "ids-negative",
        "ids-empty",
        "ids-2d",
        "ids-0d",
        "ids-list",
        "ids-meta",
        "blank-question",
        "frames-without-kv",
    ],
)
def test_ask_refuses_bad_arguments_before_anything_moves(tiny_llava_ov, args, kwargs, message):
    with _bound(tiny_llava_ov, frames_per_chunk=2) as bound:
        s = bound.stream()
        s.add_frames(random_frames(3))  # one chunk done, one frame queued
        before = _state(s)
        with pytest.raises(ConfigError, match=message):
            s.ask(*args, **kwargs)
        assert _state(s) == before and not s._lock.held


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        (torch.tensor([], dtype=torch.long), r"^prefill_ids: token ids are empty"),
        (torch.tensor([[1, 2]]), r"^prefill_ids: token ids must be a 1-D tensor"),
        (torch.tensor([0.5]), r"^prefill_ids: token ids must be an integer tensor"),
    ],
)
def test_prefill_ids_refuses_bad_ids(tiny_llava_ov, ids, message):
    with _bound(tiny_llava_ov) as bound:
        s = bound.stream()
        before = _state(s)
        with pytest.raises(ConfigError, match=message):
            s.prefill_ids(ids)
        assert _state(s) == before


def test_ids_of_any_integer_dtype_are_read_as_token_ids(tiny_llava_ov):
    with _bound(tiny_llava_ov) as bound:
        answers = []
        for dtype in (torch.long, torch.int32, torch.int16, torch.uint8):
            s = bound.stream()
            s.add_frames(random_frames(1))
            s.prefill_ids(torch.tensor([3, 4], dtype=dtype))
            answers.append(s.ask(torch.tensor([5, 9], dtype=dtype), 2).first_logits)
    assert all(torch.equal(a, answers[0]) for a in answers)


REKV = {"kv_cache": [{"strategy": "rekv", "n_local": 48, "topk": 2}]}


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        ([1.5], r"frame indices must be integers, got 1.5 \(float\) at position 0"),
        ([0, True], r"got True \(bool\) at position 1"),
        ([np.float32(1)], r"got 1.0 \(float32\) at position 0"),
        ("12", r"expected a list of frame indices, got str"),
        (3, r"expected a list of frame indices, got int"),
    ],
)
def test_rekv_external_frames_must_be_integer_indices(tiny_llava_ov, frames, message):
    with _bound(tiny_llava_ov, REKV) as bound:
        s = bound.stream()
        s.add_frames(random_frames(3))
        before = _state(s)
        with pytest.raises(ConfigError, match=r"^ask\(frames=\.\.\.\): .*" + message):
            s.ask(torch.tensor([5]), 1, frames=frames)
        assert _state(s) == before
        want = s.ask(torch.tensor([5]), 1, frames=[1]).retrieved
        for same in ([np.int64(1)], np.array([1]), [torch.tensor(1)], (1,)):
            assert s.ask(torch.tensor([5]), 1, frames=same).retrieved == want == [[1], [1]]


# -------------------------------------------------------------------- frames
@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (
            torch.from_numpy(random_frames(1)).to(torch.bfloat16),
            r"^frames must be uint8 RGB \(0-255\), got bfloat16; ",
        ),
        (
            torch.from_numpy(random_frames(1) / 255.0).to(torch.float8_e4m3fn),
            r"got float8_e4m3fn; for floats in 0\.\.1",
        ),
        (
            torch.empty(1, 40, 50, 3, dtype=torch.uint8, device="meta"),
            r"^frames: a tensor on the meta device",
        ),
        (
            [random_frames(1)[0], torch.empty(40, 50, 3, device="meta")],
            r"^frames\[1\]: a tensor on the meta device",
        ),
        (
            torch.zeros(1, 40, 50, 3, dtype=torch.complex64),
            r"got complex64; give real-valued uint8 RGB frames",
        ),
    ],
)
def test_frames_of_any_dtype_or_device_get_the_frame_error(tiny_llava_ov, bad, message):
    with _bound(tiny_llava_ov) as bound:
        s = bound.stream()
        with pytest.raises(VideoError, match=message):
            s.add_frames(bad)
        assert s._pending == [] and s.chunks_done == 0
