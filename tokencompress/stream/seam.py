"""The typed seam between a pipeline and a stream: one call encodes one chunk.

A :class:`~tokencompress.stream.stream.Stream` owns a video's state (strategy states, counters, the
LLM cache); a bound pipeline owns the model, its target and its strategies. The stream hands
frames and its position across :class:`ChunkEncoder`; back come the visual tokens, the chunk's
:class:`~tokencompress.api.types.ChunkInfo` and a :class:`ChunkTiming` filled by a
:class:`ChunkRecorder`. Later stages (the LLM's KV memory) plug in at this seam, so neither side
reaches into the other's attributes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from ..api.tokens import VisualTokens
from ..api.types import ChunkInfo, Stage, StreamConfig
from .timing import now

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from torch import Tensor

    from ..api.decode_policy import DecodePolicy, DecodeStep
    from ..api.in_decoder import InDecoderStrategy
    from ..api.kv_cache_strategy import KVBuild, KVCacheStrategy
    from ..api.target import Target
    from ..plugins.faults import Attribution

__all__ = ["StageCount", "ChunkTiming", "ChunkRecorder", "StreamPosition", "EncodedChunk", "ChunkEncoder"]


@dataclass(frozen=True)
class StageCount:
    """Tokens into and out of one token stage of one chunk, and the seconds its strategies took."""

    tokens_in: int
    tokens_out: int
    seconds: float


@dataclass(frozen=True)
class ChunkTiming:
    """Where one chunk's vision-side time went (seconds) and what each token stage kept."""

    preprocess_s: float
    vit_s: float
    stages: Mapping[Stage, StageCount] = field(default_factory=dict)

    @property
    def compress_s(self) -> float:
        """Time spent inside token-stage strategies (block strategies count as ViT time)."""
        return sum(c.seconds for c in self.stages.values())

    def tokens(self, stage: Stage) -> tuple[int, int]:
        """(in, out) at ``stage``; (0, 0) where the chunk never reached it."""
        c = self.stages.get(stage)
        return (c.tokens_in, c.tokens_out) if c is not None else (0, 0)


class ChunkRecorder:
    """Collects one chunk's marks as the vision path runs; :meth:`finish` freezes them.

    The encoder marks the end of preprocessing, the tower's end (the first token stage starts
    there) and every stage's counts; reads synchronise the device first (:func:`now`).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._start = now(device)
        self._vit_start: float | None = None
        self._vit_end: float | None = None
        self._stages: dict[Stage, StageCount] = {}

    def preprocessed(self) -> None:
        self._vit_start = now(self.device)

    def tower_finished(self) -> float:
        """Marks the tower's end once (later calls keep the first mark); returns the ViT seconds."""
        if self._vit_end is None:
            self._vit_end = now(self.device)
        return self._vit_end - self._vit_start_or_start

    def stage(self, stage: Stage, tokens_in: int, tokens_out: int, seconds: float) -> None:
        self._stages[stage] = StageCount(tokens_in, tokens_out, seconds)

    @property
    def _vit_start_or_start(self) -> float:
        return self._vit_start if self._vit_start is not None else self._start

    def finish(self) -> ChunkTiming:
        self.tower_finished()  # a target with no token stage: the tower ran to the end
        assert self._vit_end is not None
        vit_start = self._vit_start_or_start
        return ChunkTiming(vit_start - self._start, self._vit_end - vit_start, dict(self._stages))


@dataclass(frozen=True)
class StreamPosition:
    """Where the next chunk starts in its stream."""

    chunk: int
    """Index of the chunk (0 for the stream's first)."""
    frame: int
    """Stream index of its first video frame."""
    token_frame: int
    """Stream index of its first token frame (a Qwen temporal slice holds 2 video frames)."""


@dataclass(frozen=True)
class EncodedChunk:
    """What the vision side gives the stream for one chunk."""

    tokens: VisualTokens
    """Visual tokens in LLM width, ready for the target's ``prefill_visual``."""
    chunk: ChunkInfo
    timing: ChunkTiming


class ChunkEncoder(Protocol):
    """What a stream needs from the pipeline it runs through (a ``BoundPipeline``)."""

    @property
    def target(self) -> Target: ...

    @property
    def stream_config(self) -> StreamConfig: ...

    @property
    def attribution(self) -> Attribution:
        """Who to blame for a failure (strategy, package), for the stream's plugin-fault messages."""
        ...

    @property
    def kv(self) -> KVCacheStrategy | None:
        """The pipeline's kv_cache strategy (None without one); a stream opens its memory."""
        ...

    @property
    def kv_build(self) -> KVBuild | None:
        """What the kv_cache strategy was built for (layout, tokens per frame), None without one."""
        ...

    @property
    def position_fixes(self) -> tuple[str, ...]:
        """The kv_cache steps (YAML flow mappings) that bound positions on this target, for the
        message of a stream refused at the model's position limit."""
        ...

    @property
    def decoder_patched(self) -> bool:
        """Whether every decoder patch the pipeline needs is installed right now (inside ``apply()``):
        a memory with its own attention, an in_decoder strategy and a decode policy cannot run
        without theirs."""
        ...

    def decoder_calls(self) -> AbstractContextManager[None]:
        """The scope of a stream's decoder work in the calling thread (prefills, answers)."""
        ...

    @property
    def in_decoder(self) -> InDecoderStrategy | None:
        """The pipeline's in_decoder strategy (None without one); a stream keeps its bookkeeping."""
        ...

    def in_decoder_scope(self, state: Any) -> AbstractContextManager[None]:
        """The in_decoder hooks act on the calling thread's decoder calls in this block with ``state``."""
        ...

    @property
    def decode_policy(self) -> DecodePolicy | None:
        """The pipeline's kv_cache decode policy (None without one); a stream opens its state."""
        ...

    @property
    def policy_build(self) -> KVBuild | None:
        """What the decode policy was built for, None without one."""
        ...

    def decode_answering(self, step: DecodeStep, visual: Tensor) -> AbstractContextManager[None]:
        """The calling thread's decode steps on a stock cache go through ``step``; ``visual`` ``[S0]``
        bool marks the cache's visual entries when the question starts."""
        ...

    def observe(
        self, stage: Stage, chunk: ChunkInfo, n_in: int, n_out: int, seconds: float, stream_id: int
    ) -> None:
        """Tell observer plugins a stage finished."""
        ...

    def new_states(self) -> list[Any]:
        """Fresh per-stream state of every strategy, in pipeline order."""
        ...

    def copy_states(self, states: Sequence[Any]) -> list[Any]:
        """Copies of ``states`` that later chunks cannot change (for the chunk transaction)."""
        ...

    def encode_chunk(
        self,
        states: Sequence[Any],
        frames: Sequence[np.ndarray],
        position: StreamPosition,
        stream_id: int = 0,
    ) -> EncodedChunk:
        """Run the vision path of one chunk with one stream's strategy ``states``."""
        ...
