"""VidCom² (Video Compression Commander): per-frame budgets from frame uniqueness, then per-frame pruning.

Paper: Liu et al., "Video Compression Commander: Plug-and-Play Inference Acceleration for Video
Large Language Models", EMNLP 2025, https://arxiv.org/abs/2505.14454.

Follows the authors' core reference (``token_compressor/vidcom2``), so the golden fixtures match
exactly: it treats the chunk it is given as "the video", so run it on one chunk holding all frames
(``frames_per_chunk`` = the clip) to get the paper's behaviour. The streaming baseline of the STC
repository (fixed ``tokens_per_frame``, a memory of chunk means) is its own strategy,
``vidcom2_stream`` (``vidcom2_stream.py``); both score through the shared ``kernels``.

Deliberate deviations, none of which changes a fixture: scores are computed in float32 whatever the
input dtype (the reference computes in the model dtype, bf16 in its evaluations); ties in channel
variance and in token score go to the lower index instead of top-k's unspecified order; at least one
channel is scored even when ``channel_fraction * D`` floors to 0; ``retention_ratio = 1.0`` keeps
every token (the reference would still trim frames whose softmax share is below ``1/F``, because
the clamp at 1 discards the surplus of the others).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import torch
from pydantic import Field, model_validator
from torch import Tensor

from ..api.errors import BudgetError
from ..api.scoring_pruner import FrameLayout, Plan, ScoringPruner
from ..api.strategy import StrategyParams
from ..api.tokens import VisualTokens
from ..api.types import ChunkInfo, Stage, StageInfo
from .kernels import frame_similarity, gather_columns, gaussian_similarity, select_channels, unit

__all__ = [
    "VidCom2",
    "VidCom2Params",
    "ScoringParams",
    "VidCom2Analysis",
    "ChunkScores",
    "chunk_scores",
    "reconcile_budgets",
    "unit_scores",
]


class ScoringParams(StrategyParams):
    """How VidCom² and its streaming baseline score tokens."""

    channel_fraction: float = Field(
        0.5, gt=0, le=1, description="fraction of the lowest-variance channels used for scoring"
    )
    alphas: tuple[Annotated[float, Field(gt=0)], ...] = Field(
        (0.125, 0.25, 0.5, 1.0, 2.0), min_length=1, description="Gaussian-kernel bandwidths"
    )


class VidCom2Params(ScoringParams):
    retention_ratio: float = Field(
        0.25, gt=0, le=1, description="base fraction of tokens kept (r); 1.0 keeps every token"
    )
    temperature: float = Field(0.01, gt=0, description="softmax temperature over frame uniqueness (tau)")
    min_tokens_per_frame: int = Field(1, ge=1, description="every frame keeps at least this many tokens")
    exact_total: bool = Field(
        False,
        description=(
            "reconcile the per-frame rounding (largest remainder) so the chunk keeps exactly "
            "planned_count tokens; the reference rounds each frame on its own, so its total drifts"
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _no_modes(cls, data: Any) -> Any:
        # Configs written when the streaming baseline was a mode of this strategy say `mode: offline`
        # (the old default, kept in every dump): that is this strategy, so it loads. `mode: streaming`
        # is now a strategy of its own, and the error says so instead of "unknown key".
        if isinstance(data, dict) and "mode" in data:
            mode = data["mode"]
            if mode == "streaming":
                raise ValueError(
                    "mode: the streaming baseline is now its own strategy: write `strategy: vidcom2_stream` "
                    "with tokens_per_frame (and stream_score) instead of vidcom2 with mode: streaming"
                )
            if mode != "offline":
                raise ValueError(f"mode: unknown value {mode!r}; vidcom2 has no modes (remove the key)")
            data = {k: v for k, v in data.items() if k != "mode"}
        return data


@dataclass(frozen=True)
class ChunkScores:
    """The similarities VidCom² and its streaming baseline both compute for one chunk.

    ``N`` rows, ``F`` frames, ``D'`` scored channels.
    """

    selected_channels: Tensor  # [D'] long, ascending variance
    raw: Tensor  # [N, D'] float32 selected channels of the rows, not normalised
    unit_rows: Tensor  # [N, D'] the same rows L2-normalised
    video_score: Tensor  # [N] f32, similarity to the chunk's mean token ("video" mean)
    frame_score: Tensor  # [N] f32, similarity to the row's own frame mean


def chunk_scores(
    tokens: VisualTokens,
    layout: FrameLayout,
    fraction: float,
    alphas: Sequence[float],
    kernels: tuple[Callable[..., Tensor], Callable[..., tuple[Tensor, Tensor, Tensor]]] | None = None,
) -> ChunkScores:
    """Channel selection and both similarities (to the chunk mean and to the frame means).

    ``tokens`` is ``[N, D]``; ``kernels`` (select, score) replaces :func:`select_channels` and
    :func:`unit_scores` (their compiled twins).
    """
    select, score = kernels or (select_channels, unit_scores)
    x = tokens.tokens.float()  # [N, D]
    chans = select(x, fraction)
    raw = gather_columns(x, chans)  # [N, D'] row-major, whatever the input's layout
    xn, video_score, frame_score = score(raw, layout, tuple(alphas))
    return ChunkScores(chans, raw, xn, video_score, frame_score)


def unit_scores(raw: Tensor, layout: FrameLayout, alphas: tuple[float, ...]) -> tuple[Tensor, Tensor, Tensor]:
    """Unit rows ``[N, D']`` of ``raw`` and their similarity to the chunk mean and their frame's mean (``[N]`` each)."""
    xn = unit(raw)
    # Both centres are means of unit vectors and deliberately not re-normalised, as in the reference.
    video_score = gaussian_similarity(xn, xn.mean(dim=0), alphas)  # [N]
    frame_score = frame_similarity(xn, layout.mean(xn), layout, alphas)  # [N]
    return xn, video_score, frame_score


@dataclass(frozen=True)
class VidCom2Analysis:
    """Everything VidCom² computes for one chunk, kept so tests can compare with the reference.

    ``N`` rows of the carrier, ``F`` frames of the chunk, ``D'`` scored channels.
    """

    selected_channels: Tensor  # [D'] long, ascending variance
    video_score: Tensor  # [N] f32, similarity to the chunk's mean token ("video" mean)
    frame_score: Tensor  # [N] f32, similarity to the row's own frame mean
    token_score: Tensor  # [N] f32, combined similarity; the lowest are kept
    budgets: Tensor  # [F] long, rows kept per frame
    uniqueness: Tensor  # [F] f32
    scales: Tensor  # [F] f32 per-frame retention ratio after the clamp


def _round_budgets(scales: Tensor, counts: Tensor, minimum: int) -> Tensor:
    """``[F]`` long: ``scale * T`` rounded half-to-even in float32 as the reference does, then bounded.

    The lower bound is the minimum but never more than the frame holds; the upper bound is the frame.
    """
    k = torch.round(scales * counts).long()
    return torch.minimum(torch.clamp(k, min=minimum), counts)


def reconcile_budgets(budgets: Tensor, shares: Tensor, counts: Tensor, minimum: int, total: int) -> Tensor:
    """``[F]`` long budgets that sum to exactly ``total``, each within ``[min(minimum, T_f), T_f]``.

    Largest remainder with bounds: starting from the per-frame rounding ``budgets`` ``[F]``, the missing
    tokens go one at a time to the frame furthest below its ideal share ``shares`` ``[F]`` (``scale * T``
    before the clamp at 1), and a surplus is taken back from the frame furthest above it. Without
    bounds this equals the Hamilton method; frames at the bounds are skipped. Ties go to the earlier
    frame, so the result is deterministic. ``total`` must lie between the sums of the bounds.
    """
    lo = torch.clamp(counts, max=minimum)
    diff = total - int(budgets.sum())
    if diff == 0:
        return budgets
    # Unit j of frame f is the (j+1)-th token added to (or removed from) it; its priority falls by one
    # per unit, so picking the best |diff| units overall always takes a prefix of every frame's units.
    room = (counts - budgets) if diff > 0 else (budgets - lo)
    width = int(room.max())
    j = torch.arange(width, device=budgets.device, dtype=torch.float64)
    base = budgets.to(torch.float64)[:, None]
    gap = shares.to(torch.float64)[:, None]
    prio = (gap - base - j) if diff > 0 else (base - j - gap)
    prio = prio.masked_fill(j[None, :] >= room[:, None], float("-inf"))
    pick = torch.sort(prio.reshape(-1), descending=True, stable=True).indices[: abs(diff)]
    moved = torch.bincount(torch.div(pick, width, rounding_mode="floor"), minlength=budgets.numel())
    return budgets + moved if diff > 0 else budgets - moved


class VidCom2(ScoringPruner):
    """Keeps, per frame, the tokens least like the video and frame means; unique frames keep more."""

    name = "vidcom2"
    stage = Stage.PRE_PREFILL
    Params = VidCom2Params
    summary = "VidCom2: frame-uniqueness budgets, then keep the tokens least like the video and frame means"
    paper = "https://arxiv.org/abs/2505.14454"
    reference = "xuyang-liu16/VidCom2 (token_compressor/vidcom2/vidcom2.py)"

    params: VidCom2Params
    _scoring_kernels: tuple[Callable[..., Any], Callable[..., Any]] | None = None
    """(select, score) for :func:`chunk_scores`; None: the eager functions."""

    def compiled(self, compiler: Callable[[Callable], Callable]) -> VidCom2:
        """This strategy with :func:`~.kernels.select_channels` and :func:`unit_scores` run through ``compiler``."""
        return self.with_kernels(_scoring_kernels=(compiler(select_channels), compiler(unit_scores)))

    # ------------------------------------------------------------------ budgets
    def _keeps_all(self) -> bool:
        return self.params.retention_ratio == 1.0

    def _scales(self, p: Tensor) -> Tensor:
        """``[F]`` f32 per-frame ratios ``min(1, r (1 + p - mean p))`` from softmax shares ``p`` ``[F]``."""
        return torch.clamp(self.params.retention_ratio * (1 + p - p.mean()), max=1.0)

    def exact_target(self, counts: Tensor) -> int:
        """Total kept with ``exact_total`` for frames of ``counts`` ``[F]`` tokens.

        ``round(r * sum(counts))`` (Python's float64 round, half to even), raised to what the per-frame
        minimum forces and capped at every token, so the reconcile can always reach it.
        """
        n = int(counts.sum())
        floor = int(counts.clamp(max=self.params.min_tokens_per_frame).sum())
        return min(n, max(floor, round(self.params.retention_ratio * n)))

    def planned_count(self, tokens_per_frame: int, frames: int) -> int | None:
        """Exact where shapes decide it; None where the budgets follow frame uniqueness (reference mode).

        Shapes decide it for ``retention_ratio = 1``, with ``exact_total``, when the minimum covers the
        whole frame, and for a single frame (its softmax share is exactly 1, so its scale is exactly
        ``r``; the same float32 code as :meth:`analyse` does the rounding).
        """
        t, f = tokens_per_frame, frames
        if self._keeps_all() or self.params.min_tokens_per_frame >= t:
            return t * f
        if self.params.exact_total:
            return self.exact_target(torch.full((f,), t))
        if f == 1:
            scale = self._scales(torch.ones(1))
            return int(_round_budgets(scale, torch.tensor([t]), self.params.min_tokens_per_frame).sum())
        return None

    def check(self, info: StageInfo) -> None:
        t, k = info.tokens_per_frame, self.params.min_tokens_per_frame
        if k > t:
            raise BudgetError(
                f"{self.name}.min_tokens_per_frame = {k} is larger than the {t} tokens a frame has at "
                f"{info.stage.value} on this model; use at most {t}"
            )

    # ------------------------------------------------------------------ scoring
    def select_channels(self, x: Tensor) -> Tensor:
        """``[D']`` lowest-variance channels of ``x`` ``[N, D]`` (population variance), ascending."""
        return select_channels(x, self.params.channel_fraction)

    def analyse(self, tokens: VisualTokens, layout: FrameLayout | None = None) -> VidCom2Analysis:
        """Scores and budgets for one chunk ``tokens`` (``[N, D]`` rows, ragged frames allowed)."""
        layout = layout or FrameLayout.of(tokens)
        counts = layout.counts
        with torch.no_grad():
            s = chunk_scores(
                tokens, layout, self.params.channel_fraction, self.params.alphas, self._scoring_kernels
            )
            mean_video = layout.mean(s.video_score)  # [F]
            # An empty frame (pruned away before this stage) must not win the softmax with u = 0.
            uniqueness = torch.where(counts > 0, -mean_video, torch.full_like(mean_video, float("-inf")))
            p = torch.softmax((uniqueness - uniqueness.max()) / self.params.temperature, dim=0)
            scales = self._scales(p)
            budgets = _round_budgets(scales, counts, self.params.min_tokens_per_frame)
            if self.params.exact_total:
                shares = self.params.retention_ratio * (1 + p - p.mean()) * counts
                target = self.exact_target(counts)
                budgets = reconcile_budgets(budgets, shares, counts, self.params.min_tokens_per_frame, target)
            return VidCom2Analysis(
                selected_channels=s.selected_channels,
                video_score=s.video_score,
                frame_score=s.frame_score,
                token_score=s.video_score + s.frame_score,
                budgets=budgets,
                uniqueness=uniqueness,
                scales=scales,
            )

    def plan(self, tokens: VisualTokens, state: Any, chunk: ChunkInfo) -> Plan:
        """Negated similarity (the base keeps the highest, i.e. the most distinctive rows) and the
        uniqueness budgets; ``retention_ratio = 1`` keeps every row without scoring."""
        layout = FrameLayout.of(tokens)
        if self._keeps_all():
            return Plan(tokens.tokens.new_zeros(tokens.count, dtype=torch.float32), layout.counts, layout)
        a = self.analyse(tokens, layout)
        return Plan(-a.token_score, a.budgets, layout)
