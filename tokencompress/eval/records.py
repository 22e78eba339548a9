"""The one record every benchmark adapter produces and every scorer and protocol consumes.

A :class:`Query` is one model call (an OVO forward probe is its own query; a StreamingBench
proactive item is one query whose polls the protocol runs). Its window is already rounded by
the benchmark's own rule, so protocols never need to know which benchmark they run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Query", "Poll", "Loaded"]


@dataclass(frozen=True)
class Poll:
    """StreamingBench proactive polling: ask ``poll_prompt`` each second until a "yes"."""

    t0: float
    gt_time: float
    gt_output: str
    poll_prompt: str
    final_prompt: str
    end: float
    """Last poll time (``gt_time + 4``, clamped to the video)."""


@dataclass(frozen=True)
class Query:
    bench: str
    task: str
    category: str
    qid: str
    video: str
    """Absolute source video path (an opaque string: names hold ``&`` and ``=``)."""
    window: tuple[float, float]
    """Visible ``[a, b)`` in seconds after the benchmark's rounding."""
    prompt: str
    score_kind: str
    gt: Any
    order: int
    """Annotation order, restored after the incremental protocol sorts by time."""
    clip: str | None = None
    """The benchmark's own pre-cut clip path for this window (may not exist on disk)."""
    options: tuple[str, ...] = ()
    answer_prefix: str = ""
    """Text that follows the assistant turn header (ReKV's ``Best option: (``)."""
    poll: Poll | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def group_key(self) -> str:
        """The unit of sharding and of one incremental stream: the source video."""
        return self.video


@dataclass
class Loaded:
    """What a benchmark loader returns: queries in annotation order, and what it skipped."""

    bench: str
    queries: list[Query]
    skipped: dict[str, int] = field(default_factory=dict)
    source: str = ""
    """Which annotation layout was read (e.g. ``data/ovo_bench_new.json``)."""
    scoring_default: str = "official"
    warnings: list[str] = field(default_factory=list)
    skipped_ids: dict[str, list[str]] = field(default_factory=dict)
    """Reason -> where each skipped record was (``record id 7``, ``real:0:1``...)."""
