"""DyCoke TTM: in windows of 4 frames, three frames keep only the tokens that changed most.

DyCoke (Tao et al., CVPR 2025, https://arxiv.org/abs/2411.15024; reference KD-TAO/DyCoke
``dd74634``, ``llava/model/llava_arch.py:35-91`` ``dycole_ttm``) has two stages; this is the first,
its "token temporal merging". The decode-time KV pruning is not part of it.

Stage ``pre_prefill``: on LLaVA-OV it sees the projected, pooled 196 tokens per frame in LLM width,
exactly the reference's input; on the Qwen targets the merged tokens of each temporal slice (a
"frame" is a 2-frame tubelet there, so a window spans 8 decoded frames). Input ``[F*T, D]`` per
chunk, every frame full (``T`` = the stage's tokens per frame); output: the kept rows, frame-major.

The rule, causal and per frame (the streaming adaptation of DyCoke's specification), with window
phase = frames this stream has seen mod 4:

* phase 0: kept whole; it is the window's anchor;
* phase 1: the ``keep`` tokens least similar to the phase-0 token at the same index
  (cosine of L2-normalised features);
* phase 2: least similar to the phase-0 frame (raw cosine);
* phase 3: least similar to the **original** phase-2 frame (cosine of normalised features);

with ``keep = int((1 - k) * T)``. The state carried across chunks is the frame counter and the full
features of the window's phase-0 and phase-2 frames, so windows straddle chunks; it changes only
after the chunk's gather went through. For a clip of ``F = 2 (mod 4)`` frames the concatenated
output is the reference's on the whole clip, bit for bit, for any chunking.

Options: ``k`` (float in [0, 1], default 0.7, the authors' lmms-eval value): the fraction of tokens
**pruned** from each pruned frame (the reference's ``dycoke_k`` / ``merging_ratio``). A ``k`` that
keeps 0 tokens of a pruned frame at the target's ``T`` is refused at build time.

Quirks of the reference (numbered Q1-Q24 as in DyCoke's specification), as handled here:

1. Q1 "merging" drops tokens; nothing is averaged. Reproduced (this is a pruner).
2. Q2 the reference skips pass 2 on the last complete window of a clip when ``F % 4 == 0``. A
   stream cannot know where a clip ends: every window is pruned. ``ttm_clip(last_window_pass2=)``
   offers both on whole clips.
3. Q3 an odd clip's unpaired last frame is dropped. Same: not in a stream;
   ``ttm_clip(keep_unpaired_last=)``.
4. Q4 the reference raises for ``F <= 4``. A stream prunes from its first frame on.
5. Q5 a pruned frame's tokens come out most-changed first. The token carrier keeps rows in raster
   order (docs/design.md §2, §3), so the same set of rows comes out in raster order (as VisionZip's
   does). On the Qwen targets positions are the tokens' own M-RoPE ids, so the order has no effect;
   on the 1-D LLaVA targets the tokens of a pruned frame get their consecutive positions in raster
   order instead of the reference's. The reference order is in :mod:`.dycoke_ttm_select`
   (``stream_step``/``ttm_clip``), checked exactly on the fixtures.
6. Q6 pass 1 normalises twice, pass 2 once: computed exactly so.
7. Q7 phase 3 compares with the original phase-2 frame: reproduced.
8. Q8 ``keep`` truncates a double: reproduced (``T = 10`` at ``k = 0.9`` keeps 0, refused at build).
9. Q9 exact ties: ``torch.topk``'s choice decides the kept set, as in the reference.
10. Q24 ``F = rows // T`` silently ignores extra rows: the carrier always holds whole frames
    (``ttm_clip`` refuses a row count that is not a multiple of ``T``).

Q10-Q23 belong to the decode-time KV stage.

Scores are computed in float32 (the reference computes in the model dtype; equal in float32).
The output count depends on the chunk's window phase (``stream_count``), not only on its shape,
so the count is declared data-dependent: a kv_cache strategy that needs a fixed count per frame
(ReKV) is refused at build time, naming this strategy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from pydantic import Field
from torch import Tensor

from ..api.errors import BudgetError
from ..api.strategy import StrategyParams, TokenStrategy
from ..api.tokens import VisualTokens
from ..api.types import ChunkInfo, Stage, StageInfo
from .dycoke_ttm_select import WINDOW, FrameStep, keep_count, stream_step

__all__ = ["DycokeTTM", "DycokeTTMParams", "DycokeTTMState"]


class DycokeTTMParams(StrategyParams):
    k: float = Field(
        0.7,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="fraction of tokens pruned from each pruned frame (the reference's dycoke_k); a pruned "
        "frame keeps int((1 - k) * tokens_per_frame); 0.7 is the authors' lmms-eval default",
    )


@dataclass
class DycokeTTMState:
    """One stream's window: frames seen, and the full ``[T, D]`` float32 features of the current
    window's phase-0 and phase-2 frames (replaced, never written in place)."""

    frames_seen: int = 0
    phase0: Tensor | None = None
    phase2: Tensor | None = None
    last: tuple[FrameStep, ...] = ()
    """The latest chunk's per-frame steps (kept indices in the reference's order, similarity rows)."""


def _max_k(t: int) -> float:
    """The largest k with three decimals that still keeps one token of ``t``."""
    k = math.floor((1.0 - 1.0 / t) * 1000) / 1000
    while k > 0 and keep_count(k, t) < 1:
        k = round(k - 0.001, 3)
    return k


class DycokeTTM(TokenStrategy):
    """Keeps phase-0 frames whole and the ``int((1-k)*T)`` most-changed tokens of the other three."""

    name = "dycoke_ttm"
    stage = Stage.PRE_PREFILL
    Params = DycokeTTMParams
    stateful = True
    dynamic_count = True  # the count follows the window phase of the chunk's first frame
    summary = "DyCoke TTM: windows of 4 frames; 3 of 4 keep the tokens least similar to an anchor frame"
    paper = "https://arxiv.org/abs/2411.15024"
    reference = "KD-TAO/DyCoke (llava/model/llava_arch.py dycole_ttm)"

    params: DycokeTTMParams

    def keep(self, tokens_per_frame: int) -> int:
        return keep_count(self.params.k, tokens_per_frame)

    def check(self, info: StageInfo) -> None:
        t = info.tokens_per_frame
        if self.keep(t) < 1:
            raise BudgetError(
                f"{self.name}.k = {self.params.k} keeps int((1 - k) * {t}) = 0 tokens of a pruned frame "
                f"({t} tokens a frame at {info.stage.value} on this model); use k <= {_max_k(t)}"
            )

    def new_state(self) -> DycokeTTMState:
        return DycokeTTMState()

    def copy_state(self, state: DycokeTTMState) -> DycokeTTMState:
        return replace(state)  # its tensors are replaced, never written in place

    def steps(self, tokens: VisualTokens, state: DycokeTTMState) -> tuple[FrameStep, ...]:
        """Every frame's step of the causal rule for this chunk; pure (``state`` is only read)."""
        if not isinstance(state, DycokeTTMState):
            raise TypeError("dycoke_ttm is stateful: pass the object from new_state()")
        if not tokens.is_full_grid():
            raise ValueError(
                "dycoke_ttm compares every token with the token at the same index of an anchor frame, so it "
                "needs every token of every frame; put it first in stages.pre_prefill"
            )
        f, t = tokens.num_frames, tokens.tokens_per_frame_in
        x = tokens.tokens.float().view(f, t, tokens.dim)
        keep = self.keep(t)
        phase0, phase2, out = state.phase0, state.phase2, []
        with torch.no_grad():
            for i in range(f):
                step = stream_step(x[i], (state.frames_seen + i) % WINDOW, keep, phase0, phase2)
                phase0, phase2 = step.phase0, step.phase2
                out.append(step)
        return tuple(out)

    def apply(self, tokens: VisualTokens, state: DycokeTTMState, chunk: ChunkInfo) -> VisualTokens:
        if tokens.num_frames == 0:
            return tokens
        steps = self.steps(tokens, state)
        t = tokens.tokens_per_frame_in
        local = [torch.sort(s.kept).values + i * t for i, s in enumerate(steps)]  # raster order (Q5)
        kept = tokens.take(torch.cat(local))
        state.frames_seen += tokens.num_frames  # commit: the gather went through
        last = steps[-1]
        # the anchors are views of this chunk's features: keep copies, not the whole chunk
        state.phase0 = (
            last.phase0 if last.phase0 is state.phase0 or last.phase0 is None else last.phase0.clone()
        )
        state.phase2 = (
            last.phase2 if last.phase2 is state.phase2 or last.phase2 is None else last.phase2.clone()
        )
        state.last = steps
        return kept
