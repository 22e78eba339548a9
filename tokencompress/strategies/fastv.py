"""FastV: drop the visual tokens the last row attends least to, before decoder layer K.

One boundary before 0-based decoder layer ``K`` (default 2). The ranking is the attention map
decoder layer ``K - 1`` has just computed: its softmax row of the ranking row (the last prompt token
offline), averaged over heads and restricted to the visual span ``[s, s + N)``. The ``k`` best tokens
go on, in their original order, with their original positions (nothing is renumbered); layers
``>= K`` and their KV cache hold ``L - N + k`` entries, and decode positions continue the original
numbering (the llava-hf KV-cache variant). ``k = round(N * (1 - R))`` with Python's round (half to
even: 18 tokens at R = 0.75 keep 4), ``R`` = ``ratio``, the fraction dropped.

``mode: mask`` is the main code's ablation variant: every token is still computed and the dropped
ones are hidden as keys (from every query, themselves included) in layers ``>= K``; no speed-up.

Quirks of the authors' code (``pkunlp-icler/FastV``) and what this does about them:

* the ranking row is the last token's, not the paper's "average attention one token received"
  (reproduced; ``rank_rows: mean`` averages the segment's rows instead);
* batch element 0's ranking applied to the whole batch: not reproduced, the stage runs batch 1;
* all layers' attention maps kept via ``output_attentions``: not reproduced, one row is computed
  from the query and keys layer ``K - 1`` already has, under any attention implementation;
* the mask rebuilt as purely causal after the drop (padding lost): each layer gets a causal mask
  for its own key count (streams run batch 1 without padding);
* ``K = 0`` (random tokens in the mask variant, a crash inplace): refused (``layer >= 1``);
* RoPE fetched for at most 1000 positions: not reproduced, no limit;
* the inplace path with a cache crashes at the first decode step: the KV-cache semantics above;
* exact ties: the lower index wins (``torch.topk``'s order among ties is unspecified).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from ..api.in_decoder import Boundary, InDecoderParams, InDecoderStrategy, top_rows

__all__ = ["FastV", "FastVParams", "fastv_keep", "rank_attention_row"]


class FastVParams(InDecoderParams):
    layer: int = Field(
        2, ge=1, description="K: the first decoder layer that runs on the kept tokens (0-based)"
    )
    ratio: float = Field(
        0.5,
        gt=0,
        le=1,
        description="R: fraction of each chunk's visual tokens dropped (kept: round(N * (1 - R)))",
    )
    mode: Literal["drop", "mask"] = Field(
        "drop",
        description="drop: later layers run on the kept tokens; mask: all run, dropped ones hidden as keys",
    )
    positions: Literal["keep", "renumber"] = Field(
        "keep",
        description="keep: kept tokens keep their positions (the reference); renumber: contiguous per stage",
    )


def fastv_keep(n: int, ratio: float) -> int:
    """Visual tokens FastV keeps of ``n`` at ``ratio`` dropped: ``round(n * (1 - ratio))``, half to even."""
    return round(n * (1 - ratio))


def rank_attention_row(row: Tensor, start: int, n: int, k: int) -> dict[str, Tensor]:
    """FastV's choice from the ranking row's attention ``[H, L]`` (softmax probabilities of one query
    row over ``L`` keys): ``scores`` ``[n]`` (mean over heads on the span), ``visual_kept`` (absolute,
    ascending), ``keep_indices`` (every non-visual position plus the kept ones: the positions layers
    ``>= K`` get) and ``mask_keep`` ``[L]`` (the mask variant's visible key columns)."""
    scores = row.float().mean(dim=0)[start : start + n]
    kept = top_rows(scores, k) + start
    length = row.shape[-1]
    visible = torch.ones(length, dtype=torch.bool)
    visible[start : start + n] = False
    visible[kept] = True
    return {
        "scores": scores,
        "visual_kept": kept,
        "keep_indices": torch.nonzero(visible).flatten(),
        "mask_keep": visible,
    }


class FastV(InDecoderStrategy):
    """FastV (ECCV 2024): one drop before layer K, ranked by layer K-1's attention of the last row."""

    name = "fastv"
    Params = FastVParams
    summary = "FastV: before decoder layer K keep the visual tokens layer K-1's last row attends to most"
    paper = "https://arxiv.org/abs/2403.06764"
    reference = "pkunlp-icler/FastV (LlamaModel.forward fast_v_inplace / mask, llava-hf fastv_forward)"

    def __init__(self, params: FastVParams | None = None, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        p: FastVParams = self.params  # type: ignore[assignment]
        self.mode = p.mode
        self.positions = p.positions

    def boundaries(self, num_layers: int) -> tuple[Boundary, ...]:
        p: FastVParams = self.params  # type: ignore[assignment]
        return (Boundary(p.layer, "previous_attention"),)

    def keep(self, n: int, boundary: int) -> int:
        p: FastVParams = self.params  # type: ignore[assignment]
        return fastv_keep(n, p.ratio)

    def fix_for_empty(self) -> str:
        return "lower fastv.ratio (the fraction dropped)"

    @classmethod
    def conformance_params(cls, info: Any) -> dict[str, Any]:
        return {"layer": 1}  # the built-in tiny decoders have two layers
