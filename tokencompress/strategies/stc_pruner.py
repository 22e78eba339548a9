"""STC-Pruner: per frame, keep the tokens least similar to a spatial and a temporal anchor.

Follows the authors' reference so the golden fixtures match exactly,
quirks included: scoring uses the *lowest*-variance half of the channels (P1), the stream
memory is updated before the chunk is scored (P3), the frame anchor is a mean of unit
vectors left un-normalised while the memory anchor is normalised (P6), and by default the
memory averages per-chunk means position by position in each chunk's own channel order (P2).
Clean-ups that cannot change a result: a running sum instead of an ever-growing list (P4),
float32 scoring whatever the input dtype (P10), a deterministic tie order, and no dead
"video mean" score (P7).

The similarity pieces (channel selection, Gaussian kernel, chunk-mean memory) are the shared
``kernels``; the memory changes only in :meth:`StcPruner.commit`, after the chunk went through.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from ..api.scoring_pruner import FrameLayout, PerFrameParams, Plan, ScoringPruner
from ..api.tokens import VisualTokens
from ..api.types import ChunkInfo, Stage, StageInfo
from .kernels import (
    ChunkMeans,
    ChunkMeansStep,
    bandwidth_divisors,
    frame_and_centre_similarity,
    gather_columns,
    gaussian_similarity,
    select_channels,
    unit,
)

__all__ = [
    "StcPruner",
    "StcPrunerParams",
    "StcPrunerState",
    "StcPrunerDebug",
    "gaussian_similarity",
    "pruner_scores",
]


class StcPrunerParams(PerFrameParams):
    tokens_per_frame: int = Field(60, ge=1, description="tokens kept per frame (k)")
    channel_keep_ratio: float = Field(
        0.5, gt=0, le=1, description="fraction of the lowest-variance channels used for scoring"
    )
    alphas: tuple[Annotated[float, Field(gt=0)], ...] = Field(
        (0.125, 0.25, 0.5, 1.0, 2.0), min_length=1, description="Gaussian-kernel bandwidths"
    )
    memory: Literal["faithful", "channel_consistent"] = Field(
        "faithful",
        description=(
            "faithful: the reference's memory, which averages chunk means position by position although "
            "each chunk orders its channels differently (quirk P2). channel_consistent: keep full-width "
            "chunk means and pick this chunk's channels at scoring time; a deviation that changes "
            "which tokens are kept from the second chunk on."
        ),
    )


@dataclass(frozen=True)
class StcPrunerDebug:
    """The latest chunk's intermediates, kept so tests can compare with the reference fixtures.

    The two similarities stay one ``[2, N]`` block until read: splitting and reshaping them costs
    operator calls on every chunk, for a record that is rarely read.
    """

    selected_channels: Tensor  # [D'] long, ascending variance
    memory_mean: Tensor  # [D'] float32, temporal anchor before normalisation
    similarities: Tensor  # [2, N] float32: rows frame, memory
    per_frame: int | None  # rows per frame when every frame holds the same count

    def _scores(self, row: int) -> Tensor:
        scores = self.similarities[row]
        return scores if self.per_frame is None else scores.view(-1, self.per_frame)

    @property
    def frame_scores(self) -> Tensor:
        """``[F, T]`` float32 (``[N]`` when frames hold different counts): similarity to the frame anchor."""
        return self._scores(0)

    @property
    def memory_scores(self) -> Tensor:
        """``[F, T]`` float32 (``[N]`` when frames hold different counts): similarity to the memory anchor."""
        return self._scores(1)


@dataclass
class StcPrunerState(ChunkMeans):
    """One stream's temporal memory (``total``: ``[D']`` faithful or ``[D]`` channel_consistent)."""

    last: StcPrunerDebug | None = None


@dataclass(frozen=True)
class _Update:
    memory: ChunkMeansStep
    debug: StcPrunerDebug


def pruner_scores(
    xs: Tensor, mem: Tensor, layout: FrameLayout, alphas: tuple[float, ...], divisors: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """(similarities ``[2, N]``: frame and memory rows, negated sum ``[N]``) of the scored channels
    ``xs`` ``[N, D']`` against the frame anchors and the stream memory ``mem`` ``[D']``: the pruner's
    dense math. The sum of the two rows is one addition per token, so summing the block is exactly
    ``memory + frame``. ``divisors``: :func:`~.kernels.bandwidth_divisors` of ``alphas``, if built."""
    xn = unit(xs)  # [N, D']
    # [F, D'] means of unit vectors, deliberately not normalised (P6)
    frame_anchor = layout.mean(xn)
    # both Gaussian sums in one bandwidth loop (the same values as one call each)
    similarities = frame_and_centre_similarity(xn, frame_anchor, layout, unit(mem, dim=0), alphas, divisors)
    return similarities, similarities.sum(0).neg_()


class StcPruner(ScoringPruner):
    """Keeps the ``tokens_per_frame`` most novel tokens of every frame (STC, pre-prefill)."""

    name = "stc_pruner"
    stage = Stage.PRE_PREFILL
    Params = StcPrunerParams
    stateful = True
    summary = "STC-Pruner: keep per frame the tokens least like the frame mean and a running stream memory"
    paper = "https://arxiv.org/abs/2512.00891"
    reference = "lern-to-write/STC (model/prune.py)"

    @classmethod
    def conformance_params(cls, info: StageInfo) -> dict[str, Any]:
        return {"tokens_per_frame": max(1, info.tokens_per_frame * 60 // 196)}

    params: StcPrunerParams
    _select_kernel = staticmethod(select_channels)
    _score_kernel = staticmethod(pruner_scores)

    def compiled(self, compiler: Callable[[Callable], Callable]) -> StcPruner:
        """This pruner with :func:`~.kernels.select_channels` and :func:`pruner_scores` run through ``compiler``."""
        return self.with_kernels(
            _select_kernel=compiler(select_channels), _score_kernel=compiler(pruner_scores)
        )

    def __init__(self, params: StcPrunerParams | None = None, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._divisors = bandwidth_divisors(self.params.alphas)  # [A, 1, 1], read-only from here on

    def new_state(self) -> StcPrunerState:
        return StcPrunerState()

    def select_channels(self, x: Tensor) -> Tensor:
        """``[D']`` lowest-variance channels of ``x`` ``[N, D]``, ascending variance (see ``kernels``)."""
        return self._select_kernel(x, self.params.channel_keep_ratio)

    def plan(self, tokens: VisualTokens, state: StcPrunerState, chunk: ChunkInfo) -> Plan:
        """Scores ``[N]`` (negated combined similarity: the k lowest are kept, ties to the lower index).

        Frames may hold different counts (after an adaptive strategy such as VidCom²): each
        frame's anchor is then the mean over its own rows. With equal counts the computation is
        laid out exactly as the reference's, which the fixtures check bit for bit.
        """
        if not isinstance(state, StcPrunerState):
            raise TypeError("stc_pruner is stateful: pass the object from new_state()")
        if torch.is_grad_enabled():  # streams run without autograd: skip the context's own cost there
            with torch.no_grad():
                return self.plan(tokens, state, chunk)
        layout = FrameLayout.of(tokens)
        p = self.params
        flat = tokens.tokens.float()  # [N, D], frame-major
        chans = self._select_kernel(flat, p.channel_keep_ratio)  # [D'], ascending variance
        xs = gather_columns(flat, chans)  # [N, D'] contiguous
        if p.memory == "faithful":
            step = state.peek(xs.mean(0), self.name)  # positional, this chunk's channel order
            mem = step.mean
        else:
            step = state.peek(flat.mean(0), self.name)  # full-width history, channels picked now
            mem = step.mean[chans]
        similarities, scores = self._score_kernel(xs, mem, layout, p.alphas, self._divisors)
        debug = StcPrunerDebug(chans, mem, similarities, layout.per_frame)
        return self.budget_plan(scores, layout, _Update(step, debug))

    def commit(self, state: StcPrunerState, plan: Plan) -> None:
        update: _Update = plan.update
        state.commit(update.memory)
        state.last = update.debug
