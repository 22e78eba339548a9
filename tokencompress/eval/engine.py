"""What a protocol drives: an engine per variant (baseline or pipeline), a session per stream.

:class:`StreamEngine` runs a bound pipeline's :class:`~tokencompress.stream.stream.Stream`; the fakes
in :mod:`tokencompress.eval.fakes` implement the same two methods, so every protocol and scorer
check runs without weights. A session is fed frames, asked, and answers from its cache; asking
never leaves the question or the answer in the cache (``Stream.ask`` rewinds).
"""

from __future__ import annotations

import hashlib
import json
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from .records import Query

__all__ = ["Engine", "Reply", "Session", "StreamEngine"]


@dataclass
class Reply:
    text: str | None
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    visual_tokens: int | None = None
    cache_tokens: int | None = None


class Session(Protocol):
    def feed(self, frames: list[np.ndarray], times: list[float]) -> dict[str, float]: ...

    def ask(self, query: Query, prompt: str, now: float | None = None) -> Reply: ...


class Engine(Protocol):
    name: str
    key: str

    def session(self) -> Session: ...

    def active(self) -> AbstractContextManager[Any]: ...


_STAGE_KEYS = ("preprocess_ms", "vit_ms", "compress_ms", "prefill_ms", "total_ms")


class StreamEngine:
    """One variant on the shared model: ``bound`` is installed only inside :meth:`active`."""

    def __init__(
        self, bound: Any, tokenizer: Any, max_new_tokens: int, wrap: str = "chat", key: str = ""
    ) -> None:
        self.bound = bound
        self.name = bound.config.name
        self.key = key or config_key(bound.config.to_dict())
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.wrap = wrap

    def active(self) -> AbstractContextManager[Any]:
        """Every patch of the pipeline (encoder blocks, kv_cache routing, in_decoder hooks, decode
        policy, decoder kernels) installed for this variant's turn, removed after it."""
        return self.bound.patched()

    def session(self) -> _StreamSession:
        return _StreamSession(self)


class _StreamSession:
    def __init__(self, engine: StreamEngine) -> None:
        self.engine = engine
        self.stream = engine.bound.stream(tokenizer=engine.tokenizer)
        self._spent: dict[str, float] = dict.fromkeys(_STAGE_KEYS, 0.0)

    def feed(self, frames: list[np.ndarray], times: list[float]) -> dict[str, float]:
        if not frames:
            return {}
        for s in self.stream.add_frames(np.stack(frames)):  # one video: one frame size
            for k in _STAGE_KEYS:
                self._spent[k] += getattr(s, k)
        return {}

    def ask(self, query: Query, prompt: str, now: float | None = None) -> Reply:
        stream = self.stream
        before = len(stream.history)
        tok = self.engine.tokenizer
        if self.engine.wrap == "raw":  # the prompt as a plain string, no assistant header (STC + ReKV)
            text = prompt + query.answer_prefix
        else:
            text = stream.question_text(prompt) + query.answer_prefix
        ids = torch.tensor(tok.encode(text, add_special_tokens=False), dtype=torch.long)
        answer = stream.ask(ids, max_new_tokens=self.engine.max_new_tokens)
        for s in stream.history[before:]:  # the short chunk ask() flushed
            for k in _STAGE_KEYS:
                self._spent[k] += getattr(s, k)
        timings = {k.replace("total_ms", "encode_ms"): v for k, v in self._spent.items()}
        timings["ttft_ms"] = answer.first_token_ms
        timings["answer_ms"] = answer.total_ms
        timings["e2e_ms"] = timings["encode_ms"] + answer.total_ms
        self._spent = dict.fromkeys(_STAGE_KEYS, 0.0)
        return Reply(answer.text, None, timings, stream.llm.visual_tokens, stream.llm.length)


def config_key(config: dict[str, Any]) -> str:
    """A short hash of a pipeline's validated config: predictions name the exact recipe."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:10]
