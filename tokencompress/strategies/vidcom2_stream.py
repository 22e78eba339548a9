"""VidCom²'s streaming baseline: a fixed budget per frame and a per-stream memory of chunk means.

The variant the STC repository uses as a streaming baseline (``vidcom2_for_rekv``): every chunk is
scored like VidCom² scores a video (lowest-variance channels, Gaussian similarity to the chunk and
frame means), with no adaptive budget, plus a memory of the raw chunk means over the stream, updated
with this chunk before it scores. The reference's quirk is kept: each chunk picks its own channels,
yet the memory averages chunk means position by position. The memory is a running sum instead of an
ever-growing list, and it changes only in :meth:`VidCom2Stream.commit`, after the chunk went
through.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from ..api.scoring_pruner import FrameLayout, PerFrameParams, Plan, ScoringPruner
from ..api.tokens import VisualTokens
from ..api.types import ChunkInfo, Stage, StageInfo
from .kernels import ChunkMeans, ChunkMeansStep, gaussian_similarity, select_channels, unit
from .vidcom2 import ScoringParams, chunk_scores, unit_scores

__all__ = ["VidCom2Stream", "VidCom2StreamParams", "VidCom2StreamState", "VidCom2StreamAnalysis"]


class VidCom2StreamParams(PerFrameParams, ScoringParams):
    tokens_per_frame: int = Field(ge=1, description="tokens kept in every frame (the baseline's fixed K)")
    stream_score: Literal["original", "two_score", "only_memory"] = Field(
        "original",
        description=(
            "token score. original: chunk mean + frame mean (the unmodified VidCom2 score per chunk); "
            "two_score: stream memory + frame mean; only_memory: stream memory"
        ),
    )


@dataclass
class VidCom2StreamState(ChunkMeans):
    """One stream's memory: ``total`` ``[D']`` float32 sum of the raw chunk means, each in its own
    chunk's channel order, and their ``count``."""


@dataclass(frozen=True)
class VidCom2StreamAnalysis:
    """Everything the baseline computes for one chunk, kept so tests can compare with the reference.

    ``N`` rows of the carrier, ``F`` frames of the chunk, ``D'`` scored channels.
    """

    selected_channels: Tensor  # [D'] long, ascending variance
    video_score: Tensor  # [N] f32, similarity to the chunk's mean token
    frame_score: Tensor  # [N] f32, similarity to the row's own frame mean
    memory_score: Tensor  # [N] f32, similarity to the normalised stream memory
    token_score: Tensor  # [N] f32, the chosen mode's combined similarity; the lowest are kept
    step: ChunkMeansStep  # the memory including this chunk, committed by apply()

    @property
    def memory(self) -> Tensor:
        """``[D']`` raw (un-normalised) memory mean after this chunk, as the reference stores it."""
        return self.step.mean


class VidCom2Stream(ScoringPruner):
    """Keeps ``tokens_per_frame`` per frame, least like the frame mean and the chunk mean or stream memory."""

    name = "vidcom2_stream"
    stage = Stage.PRE_PREFILL
    Params = VidCom2StreamParams
    stateful = True
    summary = "VidCom2 streaming baseline (STC paper): fixed K per frame, a memory of chunk means per stream"
    paper = "https://arxiv.org/abs/2505.14454"
    reference = "lern-to-write/STC (model/vidcom2_for_rekv, compiled only)"

    params: VidCom2StreamParams
    _scoring_kernels: tuple[Callable[..., Any], Callable[..., Any]] | None = None
    """(select, score) for :func:`~.vidcom2.chunk_scores`; None: the eager functions."""

    def compiled(self, compiler: Callable[[Callable], Callable]) -> VidCom2Stream:
        """This strategy with the chunk scoring kernels run through ``compiler``."""
        return self.with_kernels(_scoring_kernels=(compiler(select_channels), compiler(unit_scores)))

    @classmethod
    def conformance_params(cls, info: StageInfo) -> dict[str, Any]:
        return {"tokens_per_frame": max(1, info.tokens_per_frame // 4)}

    def new_state(self) -> VidCom2StreamState:
        return VidCom2StreamState()

    def analyse(self, tokens: VisualTokens, state: VidCom2StreamState, layout: FrameLayout | None = None):
        """Scores for one chunk; pure: the memory step is returned, only :meth:`commit` stores it."""
        if not isinstance(state, VidCom2StreamState):
            raise TypeError("vidcom2_stream is stateful: pass the object from new_state()")
        layout = layout or FrameLayout.of(tokens)
        p = self.params
        with torch.no_grad():
            s = chunk_scores(tokens, layout, p.channel_fraction, p.alphas, self._scoring_kernels)
            step = state.peek(s.raw.mean(dim=0), self.name)  # raw features, this chunk's channel order
            # Unlike the chunk and frame centres, the memory comes from raw features and is normalised.
            memory_score = gaussian_similarity(s.unit_rows, unit(step.mean, dim=0), p.alphas)
            if p.stream_score == "original":
                token_score = s.video_score + s.frame_score
            elif p.stream_score == "two_score":
                token_score = memory_score + s.frame_score
            else:
                token_score = memory_score
        return VidCom2StreamAnalysis(
            s.selected_channels, s.video_score, s.frame_score, memory_score, token_score, step
        )

    def plan(self, tokens: VisualTokens, state: VidCom2StreamState, chunk: ChunkInfo) -> Plan:
        layout = FrameLayout.of(tokens)
        a = self.analyse(tokens, state, layout)
        return Plan(-a.token_score, self.frame_budgets(layout), layout, a.step)

    def commit(self, state: VidCom2StreamState, plan: Plan) -> None:
        state.commit(plan.update)
