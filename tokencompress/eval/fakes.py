"""Engines without weights, for checks that need a known answer.

:class:`ScriptedEngine` answers from a table keyed by ``qid`` (a callable gets the query and the
poll time, for proactive items) and records, per call, how many frames its session had been fed,
the time of the last one and the exact prompt, so tests can compare them with the synthetic
sets' expected tables.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np

from .engine import Reply
from .records import Query

__all__ = ["Call", "ScriptedEngine"]

Script = dict[str, Any] | Callable[[Query, float | None, str], str | None]


@dataclass(frozen=True)
class Call:
    qid: str
    frames: int
    last_time: float | None
    prompt: str
    now: float | None


class ScriptedEngine:
    """``script[qid]`` is a string, ``None`` (an inference error) or a callable ``(query, now, prompt)``."""

    needs_pixels = False  # it only counts frames and reads their times

    def __init__(self, script: Script, name: str = "scripted", key: str = "fake") -> None:
        self.script = script
        self.name = name
        self.key = key
        self.calls: list[Call] = []

    def active(self) -> nullcontext[None]:
        return nullcontext()

    def session(self) -> _Session:
        return _Session(self)

    def respond(self, query: Query, prompt: str, now: float | None) -> str | None:
        if callable(self.script):
            return self.script(query, now, prompt)
        value = self.script.get(query.qid, "Z")
        return value(query, now, prompt) if callable(value) else value


class _Session:
    def __init__(self, engine: ScriptedEngine) -> None:
        self.engine = engine
        self.frames = 0
        self.last: float | None = None

    def feed(self, frames: list[np.ndarray], times: list[float]) -> dict[str, float]:
        self.frames += len(frames)
        if times:
            self.last = times[-1]
        return {}

    def ask(self, query: Query, prompt: str, now: float | None = None) -> Reply:
        self.engine.calls.append(Call(query.qid, self.frames, self.last, prompt, now))
        text = self.engine.respond(query, prompt, now)
        if text is None:
            raise RuntimeError("scripted inference error")
        return Reply(
            text, timings={"e2e_ms": 1.0, "prefill_ms": 1.0, "vit_ms": 1.0}, visual_tokens=self.frames
        )
