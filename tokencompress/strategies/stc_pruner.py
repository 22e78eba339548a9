"""STC-Pruner: per frame, keep the tokens least similar to a spatial and a temporal anchor.

Follows the authors' reference (``specs/stc.md`` §3) so the golden fixtures match exactly,
quirks included: scoring uses the *lowest*-variance half of the channels (P1), the stream
memory is updated before the chunk is scored (P3), the frame anchor is a mean of unit
vectors left un-normalised while the memory anchor is normalised (P6), and by default the
memory averages per-chunk means position by position in each chunk's own channel order (P2).
Clean-ups that cannot change a result: a running sum instead of an ever-growing list (P4),
float32 scoring whatever the input dtype (P10), a deterministic tie order, and no dead
"video mean" score (P7).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as nnf
from pydantic import Field
from torch import Tensor

from ..strategy import ScoringPruner, StrategyParams
from ..tokens import VisualTokens
from ..types import ChunkInfo, Stage, StageInfo

__all__ = ["StcPruner", "StcPrunerParams", "StcPrunerState", "StcPrunerDebug"]

_EPS = 1e-12  # as torch.nn.functional.normalize, which the reference uses


class StcPrunerParams(StrategyParams):
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
    """The latest chunk's intermediates, kept so tests can compare with the reference fixtures."""

    selected_channels: Tensor  # [D'] long, ascending variance
    memory_mean: Tensor  # [D'] float32, temporal anchor before normalisation
    frame_scores: Tensor  # [F, T] float32 ([N] when frames hold different counts)
    memory_scores: Tensor  # [F, T] float32 ([N] when frames hold different counts)


@dataclass
class StcPrunerState:
    """One stream's temporal memory: a running sum of chunk means, so memory stays O(D)."""

    total: Tensor | None = None  # [D'] (faithful) or [D] (channel_consistent), float32
    count: int = 0
    last: StcPrunerDebug | None = None

    def add(self, chunk_mean: Tensor) -> Tensor:
        """Fold in one chunk's mean and return the mean over all chunks so far."""
        if self.total is None:
            self.total = torch.zeros_like(chunk_mean)
        elif self.total.shape != chunk_mean.shape:
            raise ValueError(
                f"stc_pruner memory holds {self.total.shape[0]}-channel means but this chunk gives "
                f"{chunk_mean.shape[0]}; the feature width must not change within a stream"
            )
        self.total = self.total + chunk_mean
        self.count += 1
        return self.total / self.count


def gaussian_similarity(x: Tensor, anchor: Tensor, alphas: Tensor) -> Tensor:
    """Multi-bandwidth RBF ``[...]`` between rows ``x`` ``[..., D']`` and a broadcastable anchor."""
    d2 = (x - anchor).pow(2).sum(-1, keepdim=True)
    return torch.exp(-d2 / (2 * alphas)).sum(-1)


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

    def new_state(self) -> StcPrunerState:
        return StcPrunerState()

    def select_channels(self, x: Tensor) -> Tensor:
        """``[D']`` lowest-variance channels of ``x`` ``[N, D]``, ascending variance.

        The order, not just the set, feeds the faithful memory (quirk P2). A stable sort makes
        equal variances go to the lower channel, where the reference's top-k is unspecified.
        At least one channel is kept so a tiny width cannot leave nothing to score.
        """
        keep = max(1, int(self.params.channel_keep_ratio * x.shape[1]))
        var = x.var(dim=0, correction=0)
        return torch.sort(var, stable=True).indices[:keep]

    def score(self, tokens: VisualTokens, state: StcPrunerState, chunk: ChunkInfo) -> Tensor:
        """``[N]`` negated combined similarity, so the base keeps the k lowest (ties: lower index).

        Frames may hold different counts (after an adaptive strategy such as VidCom²): each
        frame's anchor is then the mean over its own rows. With equal counts the computation is
        laid out exactly as the reference's, which the fixtures check bit for bit.
        """
        if not isinstance(state, StcPrunerState):
            raise TypeError("stc_pruner is stateful: pass the object from new_state()")
        counts = tokens.counts()
        ragged = tokens.num_frames > 1 and not bool((counts == counts[0]).all())
        with torch.no_grad():
            flat = tokens.tokens.float()  # [N, D], frame-major
            chans = self.select_channels(flat)
            xs = flat[:, chans]  # [N, D']
            if self.params.memory == "faithful":
                mem = state.add(xs.mean(0))  # positional, this chunk's channel order
            else:
                mem = state.add(flat.mean(0))[chans]  # full-width history, channels picked now
            mem_anchor = nnf.normalize(mem, dim=0, eps=_EPS)  # [D']
            alphas = torch.tensor(self.params.alphas, dtype=torch.float32, device=flat.device)
            if ragged:
                xn = nnf.normalize(xs, dim=-1, eps=_EPS)  # [N, D']
                fidx = tokens.frame - tokens.first_frame
                sums = torch.zeros(tokens.num_frames, xn.shape[1], device=xn.device).index_add_(0, fidx, xn)
                frame_anchor = (sums / counts.clamp(min=1)[:, None].float())[fidx]  # not normalised (P6)
            else:
                xn = nnf.normalize(
                    xs.view(tokens.num_frames, -1, xs.shape[1]), dim=-1, eps=_EPS
                )  # [F, T, D']
                frame_anchor = xn.mean(dim=1, keepdim=True)  # [F, 1, D'], deliberately not normalised
            frame_scores = gaussian_similarity(xn, frame_anchor, alphas)  # [F, T], or [N] when ragged
            memory_scores = gaussian_similarity(xn, mem_anchor, alphas)
            state.last = StcPrunerDebug(chans, mem, frame_scores, memory_scores)
            return -(memory_scores + frame_scores).reshape(-1)
