"""Payload of the observer hook, so metrics plugins see every stage without touching tensors."""

from __future__ import annotations

from dataclasses import dataclass

from ..api.types import Stage

__all__ = ["StageEvent"]


@dataclass(frozen=True)
class StageEvent:
    """One stage finished for one chunk of one stream."""

    stream_id: int
    chunk_index: int
    stage: Stage
    tokens_in: int
    tokens_out: int
    seconds: float
