"""PyramidDrop: drops at several stage boundaries with a geometric keep schedule, positions renumbered.

The decoder is cut into stages at ``layer_list`` (default 8, 16, 24: an entry ``ℓ`` drops right before
0-based layer ``ℓ``), or at ``layer_fractions`` of its depth (``[0.25, 0.5, 0.75]`` is the authors'
schedule on any depth: 2/4/6 of 8 layers, 7/14/21 of 28). From boundary ``j`` on a span of ``N`` visual tokens keeps ``floor(N * ρ_j)``,
where ``ρ_j = λ^(j+1)`` (``ratio`` = λ, default 0.5: 576 → 288 → 144 → 72) or the explicit
``ratios``; every count is a fraction of the original ``N``, not a chain of drops. At each boundary
the ranking row is recomputed as layer ``ℓ`` would compute it: layer ``ℓ``'s ``input_layernorm`` and
q/k projections (RoPE at the current positions) applied to the boundary's hidden states, one
softmax row of the last token over the call's rows, mean over heads. The kept tokens are then
**renumbered** 0..L'-1 per stage (``positions: keep`` keeps them instead); a decode token's
position is lowered at each boundary by what was dropped there, so in stage ``j`` it equals that
stage's cache length. In a stream, each stage's counter carries across chunks the same way.

Quirks of the authors' code (``Cooperx521/PyramidDrop``) and what this does about them:

* the query row is located from the first prefill's bookkeeping, which is the last token only with
  one image and no padding: here it is the segment's last row still present;
* grouped-query attention with ``1 < kv_heads < heads`` raises in the reference (no ``repeat_kv``):
  query head ``h`` uses KV head ``h // (heads / kv_heads)``;
* eager attention crashes in the reference (a 4-D mask handed where a 2-D one is expected): any
  attention implementation works here;
* ``int(N * ratio)`` is a float product (0.29 x 100 gives 28): the ratio is rounded to 1e-9 first,
  so 29 (the same for every dyadic ratio, the authors' 0.5 / 0.25 / 0.125 included);
* every later multi-token call re-runs the drop with the first call's bookkeeping: a call drops only
  the spans it announces;
* the ranking softmax is cast back to fp16/bf16 before comparing: ranked in float32;
* the 2048-token truncation after each drop: ignored;
* exact ties: the lower index wins.

The ranking reads the call's own rows only (no cached keys): in a stream a chunk's visual tokens are
ranked among that chunk's rows, because the cached keys of layer ``ℓ`` sit in another stage's
numbering.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError
from torch import Tensor, nn

from ..api.errors import CompatibilityError
from ..api.in_decoder import (
    Boundary,
    DecoderStack,
    InDecoderParams,
    InDecoderStrategy,
    floor_fraction,
    top_rows,
)

__all__ = ["DEFAULT_LAYERS", "PyramidDrop", "PyramidDropParams", "rank_step", "rotate_half_rope"]

DEFAULT_LAYERS = (8, 16, 24)
"""The authors' boundaries (LLaVA-1.5 / LLaVA-NeXT, 32 decoder layers)."""


class PyramidDropParams(InDecoderParams):
    layer_list: tuple[int, ...] | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="Stage boundaries: drop right before these 0-based layers (default 8, 16, 24: the "
        "authors' schedule for 32-layer decoders)",
    )
    layer_fractions: tuple[float, ...] | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="Stage boundaries as fractions of the decoder's depth, rounded to layers (the "
        "authors' 8, 16, 24 of 32 is [0.25, 0.5, 0.75]); instead of layer_list",
    )
    ratio: float = Field(
        0.5, gt=0, le=1, description="λ: boundary j keeps floor(N * λ^(j+1)) of a chunk's N tokens"
    )
    ratios: tuple[float, ...] | None = Field(
        None,
        description="Explicit kept fractions of the original N per boundary (instead of powers of ratio)",
    )
    positions: Literal["keep", "renumber"] = Field(
        "renumber",
        description="renumber: each stage numbers its tokens contiguously (the reference); keep: original",
    )

    @field_validator("layer_list")
    @classmethod
    def _increasing(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is not None and (
            any(b < 1 for b in value) or any(a >= b for a, b in zip(value, value[1:], strict=False))
        ):
            raise PydanticCustomError(
                "pdrop_layers",
                "the boundaries must be increasing decoder layers >= 1 (a drop needs a layer before it); "
                "use e.g. [8, 16, 24]",
            )
        return value

    @field_validator("layer_fractions")
    @classmethod
    def _fractions(cls, value: tuple[float, ...] | None, info: ValidationInfo) -> tuple[float, ...] | None:
        if value is None:
            return value
        if info.data.get("layer_list") is not None:
            raise PydanticCustomError("pdrop_fractions", "give layer_list or layer_fractions, not both")
        if any(not 0 < f < 1 for f in value) or any(a >= b for a, b in zip(value, value[1:], strict=False)):
            raise PydanticCustomError(
                "pdrop_fractions",
                "the fractions of the depth must increase within (0, 1); use e.g. [0.25, 0.5, 0.75]",
            )
        return value

    @field_validator("ratios")
    @classmethod
    def _one_per_boundary(
        cls, value: tuple[float, ...] | None, info: ValidationInfo
    ) -> tuple[float, ...] | None:
        if value is None:
            return value
        bounds = info.data.get("layer_fractions") or info.data.get("layer_list") or DEFAULT_LAYERS
        if len(value) != len(bounds):
            raise PydanticCustomError(
                "pdrop_ratios",
                "give one kept fraction per boundary ({n}), e.g. [0.5, 0.25, 0.125]",
                {"n": len(bounds)},
            )
        if any(not 0 < x <= 1 for x in value) or any(a < b for a, b in zip(value, value[1:], strict=False)):
            raise PydanticCustomError(
                "pdrop_ratios",
                "the kept fractions must lie in (0, 1] and not grow from one boundary to the next; "
                "use e.g. [0.5, 0.25, 0.125]",
            )
        return value


def rotate_half_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """LLaMA's rotate-half RoPE of ``x`` ``[..., L, d]`` with ``cos``/``sin`` ``[L, d]``."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def rank_step(
    hidden: Tensor,
    layer: nn.Module,
    position_embeddings: tuple[Tensor, Tensor],
    start: int,
    n: int,
    k: int,
    heads: int,
    kv_heads: int,
) -> dict[str, Tensor]:
    """One PyramidDrop rank-and-drop on a LLaMA layer, spelled out (the stage itself reads q and k
    through the model's own attention module): ``hidden`` ``[1, L, D]`` at the boundary, ``layer``
    the next decoder layer (``input_layernorm``, ``self_attn.q_proj``/``k_proj``). Returns the
    pre-RoPE ``q_last`` ``[H, d]`` and ``k`` ``[kvh, L, d]``, ``attn_row`` ``[H, L]``, ``scores``
    ``[n]``, ``kept_local``, ``keep_indices`` and the renumbered ``new_position_ids``."""
    length = hidden.shape[1]
    h = layer.input_layernorm(hidden)[0]
    d = layer.self_attn.q_proj.out_features // heads
    q = layer.self_attn.q_proj(h[-1:]).view(1, heads, d).transpose(0, 1)  # [H, 1, d]
    kk = layer.self_attn.k_proj(h).view(length, kv_heads, d).transpose(0, 1)  # [kvh, L, d]
    cos, sin = (t.reshape(-1, t.shape[-1]) for t in position_embeddings)
    q_rot = rotate_half_rope(q, cos[-1:], sin[-1:])
    k_rot = rotate_half_rope(kk, cos, sin).repeat_interleave(heads // kv_heads, dim=0)
    logits = torch.matmul(q_rot.float(), k_rot.float().transpose(-1, -2))[:, 0] / d**0.5
    row = torch.softmax(logits, dim=-1)
    scores = row.mean(dim=0)[start : start + n]
    local = top_rows(scores, k)
    keep = torch.cat([torch.arange(start), local + start, torch.arange(start + n, length)])
    return {
        "q_last": q[:, 0],
        "k": kk,
        "attn_row": row,
        "scores": scores,
        "kept_local": local,
        "keep_indices": keep,
        "new_position_ids": torch.arange(keep.numel()),
    }


class PyramidDrop(InDecoderStrategy):
    """PyramidDrop (CVPR 2025): geometric drops at stage boundaries, ranked with the next layer's q/k."""

    name = "pdrop"
    Params = PyramidDropParams
    boundary_field = "layer_list"
    summary = (
        "PyramidDrop: drops at several decoder layers (keep λ, λ², ...), ranked with the next layer's q/k"
    )
    paper = "https://arxiv.org/abs/2410.17247"
    reference = "Cooperx521/PyramidDrop (LlamaModel.pdrop_forward, pdrop_rank_drop)"

    def __init__(self, params: PyramidDropParams | None = None, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        p: PyramidDropParams = self.params  # type: ignore[assignment]
        self.positions = p.positions

    def boundaries(self, num_layers: int) -> tuple[Boundary, ...]:
        p: PyramidDropParams = self.params  # type: ignore[assignment]
        if p.layer_fractions is not None:
            layers = tuple(round(f * num_layers) for f in p.layer_fractions)
        else:
            layers = p.layer_list if p.layer_list is not None else DEFAULT_LAYERS
        return tuple(Boundary(layer, "next_projection") for layer in layers)

    def check_decoder(self, stack: DecoderStack, target: str, visual: int | None) -> None:
        p: PyramidDropParams = self.params  # type: ignore[assignment]
        layers = [b.layer for b in self.boundaries(stack.num_layers)]
        if p.layer_fractions is not None and len(set(layers)) != len(layers):
            raise CompatibilityError(
                f"pdrop.layer_fractions: {list(p.layer_fractions)} of the {stack.num_layers}-layer decoder of "
                f"target '{target}' round to the layers {layers}, some of them equal; use fewer boundaries"
            )
        super().check_decoder(stack, target, visual)

    def fraction(self, boundary: int) -> float:
        p: PyramidDropParams = self.params  # type: ignore[assignment]
        return p.ratios[boundary] if p.ratios is not None else p.ratio ** (boundary + 1)

    def keep(self, n: int, boundary: int) -> int:
        return floor_fraction(n, self.fraction(boundary))

    def fix_for_empty(self) -> str:
        return "raise pdrop.ratio (or the last of pdrop.ratios) or use fewer boundaries"

    @classmethod
    def conformance_params(cls, info: Any) -> dict[str, Any]:
        return {"layer_list": [1]}  # the built-in tiny decoders have two layers
