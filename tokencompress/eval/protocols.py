"""The two ways a query's window reaches the model.

``reference``: a fresh session per query over its whole window ``[a, b)`` (prefix re-encode with
``a = 0``, window re-encode otherwise), what the authors' scripts do. ``incremental``: one
session per video; queries sorted by ``b`` (stable), the frames in ``[b_prev, b)`` appended, the
question answered from the cache, which ``ask`` rewinds to the video-only state; a repeated
``b`` answers without encoding. StreamingBench proactive items poll once a second from the
instruction time (both protocols; incremental keeps one session per item).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ..api.errors import TokenCompressError
from .engine import Engine, Reply, Session
from .records import Query
from .sampling import FrameRule, select
from .scoring import poll_says_yes
from .video_source import VideoSource

__all__ = ["PROTOCOLS", "run_group"]

PROTOCOLS = ("reference", "incremental")


def run_group(
    engine: Engine,
    queries: list[Query],
    source: VideoSource,
    rule: FrameRule,
    protocol: str,
    done: set[str] | frozenset[str] = frozenset(),
) -> Iterator[dict[str, Any]]:
    """Prediction records (unscored) for the not-yet-``done`` queries of one video."""
    todo = [q for q in queries if q.qid not in done]
    if not todo:
        return
    runner = _Runner(engine, source, rule)
    if protocol == "reference":
        for q in todo:
            yield runner.proactive(q, incremental=False) if q.poll else runner.fresh(q)
        return
    for q in todo:
        if q.poll:
            yield runner.proactive(q, incremental=True)
    plain = sorted((q for q in queries if q.poll is None), key=lambda q: (q.window[1], q.order))
    if any(q.window[0] > 0 for q in plain):
        raise TokenCompressError(
            "--protocol incremental streams each video from 0; windows that start later (--context) need --protocol reference"
        )
    last_needed = max((i for i, q in enumerate(plain) if q.qid not in done), default=-1)
    stream = runner.stream()
    for q in plain[: last_needed + 1]:
        record = stream.answer(q, skip=q.qid in done)
        if record is not None:
            yield record


class _Runner:
    def __init__(self, engine: Engine, source: VideoSource, rule: FrameRule) -> None:
        self.engine = engine
        self.source = source
        self.rule = rule

    def indices(self, a: float, b: float) -> list[int]:
        return select(self.rule, self.source.times, self.source.avg_fps, a, b, self.source.path)

    def feed(self, session: Session, idx: list[int]) -> None:
        if idx:
            pixels = (
                self.source.frames(idx) if getattr(self.engine, "needs_pixels", True) else [None] * len(idx)
            )
            session.feed(pixels, [self.source.times[i] for i in idx])

    def record(self, q: Query, reply: Reply, idx: list[int], **extra: Any) -> dict[str, Any]:
        return {
            "qid": q.qid,
            "pipeline": self.engine.name,
            "pipeline_key": self.engine.key,
            "response": reply.text,
            "error": reply.error,
            "frames": {"count": len(idx), "last_time": self.source.times[idx[-1]] if idx else None},
            "window": [q.window[0], min(q.window[1], self.source.duration)],
            "timings": reply.timings,
            "visual_tokens": reply.visual_tokens,
            "cache_tokens": reply.cache_tokens,
            **extra,
        }

    def fresh(self, q: Query) -> dict[str, Any]:
        idx = self.indices(*q.window)
        return self.record(q, _call(lambda: self._fresh(q, idx)), idx)

    def _fresh(self, q: Query, idx: list[int]) -> Reply:
        session = self.engine.session()
        self.feed(session, idx)
        return session.ask(q, q.prompt)

    def stream(self) -> _Incremental:
        return _Incremental(self)

    def proactive(self, q: Query, incremental: bool) -> dict[str, Any]:
        """Poll at now = t0 + 1, t0 + 2, ... up to gt + 4 over ``[t0, now)``; on the first "yes"
        ask the instruction itself and stop. The dialog's last turn decides the score."""
        poll = q.poll
        assert poll is not None
        dialog: list[dict[str, Any]] = []
        timings: dict[str, float] = {}
        errors = []
        answered: float | bool = False
        session = self.engine.session() if incremental else None
        fed: list[int] = []
        idx: list[int] = []
        now = poll.t0 + 1
        while now <= poll.end + 1e-9:
            idx = self.indices(poll.t0, min(now, self.source.duration))
            if incremental:
                assert session is not None
                self.feed(session, idx[len(fed) :])
                fed = idx
                current = session
            else:
                current = self.engine.session()
                self.feed(current, idx)
            reply = _call(lambda s=current, t=now: s.ask(q, poll.poll_prompt, t))
            _add(timings, reply.timings)
            if reply.error:
                errors.append(reply.error)
            dialog += [{"role": "user", "kind": "poll", "time": now}, _turn(reply, now)]
            if poll_says_yes(reply.text):
                final = _call(lambda s=current, t=now: s.ask(q, poll.final_prompt, t))
                _add(timings, final.timings)
                if final.error:
                    errors.append(final.error)
                dialog += [{"role": "user", "kind": "final", "time": now}, _turn(final, now)]
                answered = now
                break
            now += 1
        last = dialog[-1]["content"] if dialog else None
        reply = Reply(last, "; ".join(errors) or None, timings, None, None)
        return self.record(q, reply, idx, dialog=dialog, answered=answered)


class _Incremental:
    """One stream over a video; frames must be a prefix-consistent function of absolute time."""

    def __init__(self, runner: _Runner) -> None:
        self.runner = runner
        self.session = runner.engine.session()
        self.fed: list[int] = []

    def answer(self, q: Query, skip: bool) -> dict[str, Any] | None:
        idx = self.runner.indices(*q.window)
        if idx[: len(self.fed)] != self.fed:
            raise TokenCompressError(
                f"--frame-rule {self.runner.rule.name} picks different earlier frames for a later window "
                f"(query {q.qid}); --protocol incremental needs rekv_stride or time_slots"
            )
        new = idx[len(self.fed) :]
        if skip:  # resumed: already answered, but later queries need these frames in the cache
            reply = _call(lambda: self.runner.feed(self.session, new))
            self.fed = idx if reply.error is None else self._restart()
            return None
        failed = _call(lambda: self.runner.feed(self.session, new))
        if failed.error:
            self._restart()
            return self.runner.record(q, failed, idx)
        self.fed = idx
        return self.runner.record(q, _call(lambda: self.session.ask(q, q.prompt)), idx)

    def _restart(self) -> list[int]:
        """After a failed feed the cache state is unknown: start over, re-encoding from 0."""
        self.session = self.runner.engine.session()
        self.fed = []
        return self.fed


def _call(fn: Callable[[], Any]) -> Reply:
    """An inference error scores 0 and is counted, it does not stop the run."""
    try:
        out = fn()
    except TokenCompressError as exc:
        return Reply(None, f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # noqa: BLE001 - recorded per query, counted in the results
        return Reply(None, f"{type(exc).__name__}: {exc}")
    return out if isinstance(out, Reply) else Reply("", None)


def _turn(reply: Reply, now: float) -> dict[str, Any]:
    return {"role": "assistant", "content": reply.text, "time": now}


def _add(total: dict[str, float], part: dict[str, float]) -> None:
    for k, v in part.items():
        total[k] = total.get(k, 0.0) + v
