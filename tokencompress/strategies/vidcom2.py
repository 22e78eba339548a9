"""VidCom² (Video Compression Commander): per-frame budgets from frame uniqueness, then per-frame pruning.

Paper: Liu et al., "Video Compression Commander: Plug-and-Play Inference Acceleration for Video
Large Language Models", EMNLP 2025, https://arxiv.org/abs/2505.14454. Algorithm and quirks:
``specs/vidcom2.md``.

Two modes. ``offline`` follows the authors' core reference (``token_compressor/vidcom2``), so the
golden fixtures match exactly: it treats the chunk it is given as "the video", so run it on one
chunk holding all frames (``frames_per_chunk`` = the clip) to get the paper's behaviour.
``streaming`` is the baseline variant from the STC repository (``vidcom2_for_rekv``): a fixed
``tokens_per_frame`` per frame and a per-stream memory of chunk means, including the reference's
quirk of averaging chunk means position by position although each chunk picks its own channels
(spec §6).

Deliberate deviations, none of which changes a fixture: scores are computed in float32 whatever the
input dtype (the reference computes in the model dtype, bf16 in its evaluations); ties in channel
variance and in token score go to the lower index instead of top-k's unspecified order; at least one
channel is scored even when ``channel_fraction * D`` floors to 0; ``retention_ratio = 1.0`` keeps
every token (the reference would still trim frames whose softmax share is below ``1/F``, because
the clamp at 1 discards the surplus of the others); the streaming memory is a running sum instead
of an ever-growing list.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as nnf
from pydantic import Field, model_validator
from torch import Tensor

from ..errors import BudgetError
from ..strategy import ScoringPruner, StrategyParams, select_per_frame
from ..tokens import VisualTokens
from ..types import ChunkInfo, Stage, StageInfo

__all__ = [
    "VidCom2",
    "VidCom2Params",
    "VidCom2State",
    "VidCom2Analysis",
    "gaussian_similarity",
    "reconcile_budgets",
]

_EPS = 1e-12  # as torch.nn.functional.normalize, which the reference uses
_OFFLINE_ONLY = ("retention_ratio", "temperature", "min_tokens_per_frame", "exact_total")
_STREAMING_ONLY = ("tokens_per_frame", "stream_score")


class VidCom2Params(StrategyParams):
    mode: Literal["offline", "streaming"] = Field(
        "offline",
        description=(
            "offline: the paper's method on the whole chunk (adaptive per-frame budgets). streaming: the STC "
            "repository's streaming baseline (fixed tokens_per_frame, a memory of chunk means per stream)"
        ),
    )
    retention_ratio: float = Field(
        0.25, gt=0, le=1, description="offline: base fraction of tokens kept (r); 1.0 keeps every token"
    )
    temperature: float = Field(
        0.01, gt=0, description="offline: softmax temperature over frame uniqueness (tau)"
    )
    min_tokens_per_frame: int = Field(
        1, ge=1, description="offline: every frame keeps at least this many tokens"
    )
    exact_total: bool = Field(
        False,
        description=(
            "offline: reconcile the per-frame rounding (largest remainder) so the chunk keeps exactly "
            "planned_count tokens; the reference rounds each frame on its own, so its total drifts"
        ),
    )
    channel_fraction: float = Field(
        0.5, gt=0, le=1, description="fraction of the lowest-variance channels used for scoring"
    )
    alphas: tuple[Annotated[float, Field(gt=0)], ...] = Field(
        (0.125, 0.25, 0.5, 1.0, 2.0), min_length=1, description="Gaussian-kernel bandwidths"
    )
    tokens_per_frame: int | None = Field(
        None, ge=1, description="streaming: tokens kept in every frame (required in streaming mode)"
    )
    stream_score: Literal["original", "two_score", "only_memory"] = Field(
        "original",
        description=(
            "streaming: token score. original: chunk mean + frame mean (the unmodified VidCom2 score per "
            "chunk); two_score: stream memory + frame mean; only_memory: stream memory"
        ),
    )

    @model_validator(mode="after")
    def _fields_match_mode(self) -> VidCom2Params:
        # A field that cannot act in the chosen mode is refused rather than silently ignored (the same
        # reason params forbid unknown keys). Default values pass, so a dumped-and-reloaded config works.
        unused = _OFFLINE_ONLY if self.mode == "streaming" else _STREAMING_ONLY
        for name in unused:
            if getattr(self, name) != type(self).model_fields[name].default:
                raise ValueError(f"{name} has no effect in mode={self.mode!r}; remove it")
        if self.mode == "streaming" and self.tokens_per_frame is None:
            raise ValueError(
                "tokens_per_frame is required in mode='streaming' (the baseline keeps a fixed K)"
            )
        return self


@dataclass
class VidCom2State:
    """One stream's memory for ``streaming`` mode; offline mode never reads or writes it."""

    total: Tensor | None = None
    """``[D']`` float32 running sum of the raw chunk means, each in its own chunk's channel order."""
    count: int = 0


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
    uniqueness: Tensor | None = None  # [F] f32, offline only
    scales: Tensor | None = None  # [F] f32 per-frame retention ratio after the clamp, offline only
    memory_score: Tensor | None = None  # [N] f32 similarity to the stream memory, streaming only
    memory_total: Tensor | None = None  # [D'] f32 memory sum including this chunk, streaming only
    memory_count: int = 0

    @property
    def memory(self) -> Tensor | None:
        """``[D']`` raw (un-normalised) memory mean after this chunk, as the reference stores it."""
        return None if self.memory_total is None else self.memory_total / self.memory_count


def gaussian_similarity(x: Tensor, centre: Tensor, alphas: Sequence[float]) -> Tensor:
    """Multi-bandwidth RBF ``[...]`` between rows ``x`` ``[..., D']`` and broadcastable centres.

    The bandwidths are added one by one in the given order, as the reference does, so float32
    results stay within the fixtures' tolerance after the sharp softmax amplifies them.
    """
    d2 = (x - centre).pow(2).sum(-1)
    out = torch.exp(-d2 / (2 * alphas[0]))
    for a in alphas[1:]:
        out = out + torch.exp(-d2 / (2 * a))
    return out


def _frame_mean(values: Tensor, fid: Tensor, counts: Tensor) -> Tensor:
    """``[F, ...]`` per-frame mean of ``values`` ``[N, ...]`` (an empty frame gives 0).

    Equal frames take the reference's reshape-and-mean path, whose float32 rounding the fixtures
    record; ragged frames (after an earlier strategy) fall back to a segment sum.
    """
    f = counts.numel()
    if f and bool((counts == counts[0]).all()) and int(counts[0]) > 0:
        return values.reshape(f, int(counts[0]), *values.shape[1:]).mean(dim=1)
    sums = torch.zeros(f, *values.shape[1:], dtype=values.dtype, device=values.device).index_add_(
        0, fid, values
    )
    return sums / counts.clamp(min=1).to(values.dtype).reshape(-1, *([1] * (values.dim() - 1)))


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
    stateful = True  # streaming mode keeps a memory per stream; offline mode leaves its state untouched
    summary = "VidCom2: frame-uniqueness budgets, then keep the tokens least like the video and frame means"
    paper = "https://arxiv.org/abs/2505.14454"
    reference = "xuyang-liu16/VidCom2 (token_compressor/vidcom2/vidcom2.py); streaming: lern-to-write/STC"

    params: VidCom2Params

    def new_state(self) -> VidCom2State:
        return VidCom2State()

    # ------------------------------------------------------------------ budgets
    def _streaming(self) -> bool:
        return self.params.mode == "streaming"

    def _keeps_all(self) -> bool:
        return self.params.mode == "offline" and self.params.retention_ratio == 1.0

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

        Shapes decide it in streaming mode, for ``retention_ratio = 1``, with ``exact_total``, when the
        minimum covers the whole frame, and for a single frame (its softmax share is exactly 1, so its
        scale is exactly ``r``; the same float32 code as :meth:`analyse` does the rounding).
        """
        t, f = tokens_per_frame, frames
        if self._streaming():
            return min(int(self.params.tokens_per_frame or 0), t) * f
        if self._keeps_all() or self.params.min_tokens_per_frame >= t:
            return t * f
        if self.params.exact_total:
            return self.exact_target(torch.full((f,), t))
        if f == 1:
            scale = self._scales(torch.ones(1))
            return int(_round_budgets(scale, torch.tensor([t]), self.params.min_tokens_per_frame).sum())
        return None

    def check(self, info: StageInfo) -> None:
        t = info.tokens_per_frame
        if self._streaming():
            field, k = "tokens_per_frame", int(self.params.tokens_per_frame or 0)
        else:
            field, k = "min_tokens_per_frame", self.params.min_tokens_per_frame
        if k > t:
            raise BudgetError(
                f"{self.name}.{field} = {k} is larger than the {t} tokens a frame has at {info.stage.value} "
                f"on this model; use at most {t}"
            )

    # ------------------------------------------------------------------ scoring
    def select_channels(self, x: Tensor) -> Tensor:
        """``[D']`` lowest-variance channels of ``x`` ``[N, D]`` (population variance), ascending.

        The reference scores on the least varying half (its docstring calls them least informative).
        The order matters to the streaming memory, which stores means position by position.
        """
        keep = max(1, int(self.params.channel_fraction * x.shape[1]))
        return torch.sort(x.var(dim=0, correction=0), stable=True).indices[:keep]

    def analyse(self, tokens: VisualTokens, state: Any = None) -> VidCom2Analysis:
        """Scores and budgets for one chunk ``tokens`` (``[N, D]`` rows, ragged frames allowed).

        Pure: streaming mode reads ``state`` (a :class:`VidCom2State`) but only :meth:`apply` commits
        the new memory, so scoring twice never counts a chunk twice.
        """
        if self._streaming() and not isinstance(state, VidCom2State):
            raise TypeError("vidcom2 in streaming mode is stateful: pass the object from new_state()")
        with torch.no_grad():
            x = tokens.tokens.float()  # [N, D]
            f = tokens.num_frames
            fid = tokens.frame - tokens.first_frame  # [N]
            counts = torch.bincount(fid, minlength=f)  # [F]
            chans = self.select_channels(x)
            raw = x[:, chans]  # [N, D']
            xn = nnf.normalize(raw, dim=-1, eps=_EPS)
            alphas = self.params.alphas
            # Both centres are means of unit vectors and deliberately not re-normalised (spec §3.2).
            video_centre = xn.mean(dim=0)  # [D']
            frame_centre = _frame_mean(xn, fid, counts)  # [F, D']
            video_score = gaussian_similarity(xn, video_centre, alphas)  # [N]
            frame_score = gaussian_similarity(xn, frame_centre[fid], alphas)  # [N]
            if self._streaming():
                return self._analyse_streaming(
                    state, raw, xn, alphas, chans, video_score, frame_score, counts
                )
            mean_video = _frame_mean(video_score, fid, counts)  # [F]
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
                selected_channels=chans,
                video_score=video_score,
                frame_score=frame_score,
                token_score=video_score + frame_score,
                budgets=budgets,
                uniqueness=uniqueness,
                scales=scales,
            )

    def _analyse_streaming(
        self,
        state: VidCom2State,
        raw: Tensor,
        xn: Tensor,
        alphas: Sequence[float],
        chans: Tensor,
        video_score: Tensor,
        frame_score: Tensor,
        counts: Tensor,
    ) -> VidCom2Analysis:
        """The STC baseline: the memory is updated with this chunk before it scores (spec §6)."""
        chunk_mean = raw.mean(dim=0)  # [D'] raw features, in this chunk's channel order
        if state.total is not None and state.total.shape != chunk_mean.shape:
            raise ValueError(
                f"vidcom2 memory holds {state.total.shape[0]}-channel means but this chunk gives "
                f"{chunk_mean.shape[0]}; the feature width must not change within a stream"
            )
        total = chunk_mean if state.total is None else state.total + chunk_mean
        count = state.count + 1
        # Unlike the video and frame centres, the memory comes from raw features and is normalised.
        memory_score = gaussian_similarity(xn, nnf.normalize(total / count, dim=0, eps=_EPS), alphas)
        mode = self.params.stream_score
        if mode == "original":
            token_score = video_score + frame_score
        elif mode == "two_score":
            token_score = memory_score + frame_score
        else:
            token_score = memory_score
        return VidCom2Analysis(
            selected_channels=chans,
            video_score=video_score,
            frame_score=frame_score,
            token_score=token_score,
            budgets=counts.clamp(max=int(self.params.tokens_per_frame or 0)),
            memory_score=memory_score,
            memory_total=total,
            memory_count=count,
        )

    # ------------------------------------------------------------- template
    def score(self, tokens: VisualTokens, state: Any, chunk: ChunkInfo) -> Tensor:
        """``[N]`` negated similarity, so the base's highest-first top-k keeps the most distinctive rows."""
        return -self.analyse(tokens, state).token_score

    def frame_budgets(self, tokens: VisualTokens, state: Any) -> Tensor:
        """``[F]`` adaptive budgets (offline) or ``min(tokens_per_frame, T_f)`` (streaming)."""
        if self._keeps_all():
            return tokens.counts()
        return self.analyse(tokens, state).budgets

    def apply(self, tokens: VisualTokens, state: Any, chunk: ChunkInfo) -> VisualTokens:
        # Overridden only to compute scores and budgets once (both come from the same analysis) and to
        # commit the streaming memory exactly once per chunk; selection and gather are the base's.
        if self._keeps_all() or tokens.count == 0:
            return tokens
        a = self.analyse(tokens, state)
        if a.memory_total is not None:
            state.total, state.count = a.memory_total, a.memory_count
        index = select_per_frame(-a.token_score, tokens.frame, a.budgets, tokens.first_frame)
        return tokens.take(index)
