"""ToMe: merge similar tokens inside every vision-encoder layer.

Token Merging (Bolya et al., ICLR 2023, https://arxiv.org/abs/2210.09461) makes the ViT cheaper
without training: each layer removes ``r`` tokens by merging them into their most similar
partners, so attention and MLP of later layers run on fewer tokens. Per layer, exactly as the
reference timm/SWAG patch places it:

1. pre-norm attention over the current tokens, with ``log(size)`` added to every key's logit
   (proportional attention: a merged token is attended as often as its originals would be);
2. the attention residual is added;
3. the matching metric is the layer's attention keys (after ``k_proj`` with bias, unscaled)
   averaged over heads, ``[F, n, head_dim]``;
4. the residual stream is size-weighted-merged (:mod:`.tome_merge`);
5. the MLP residual runs on the merged tokens.

Sizes and the owner map (which slot holds every original token) live in a per-stream
:class:`ToMeState` and are reset at every chunk: frames never merge with each other and a chunk
never depends on the previous one. A "frame" is a row of the adapter's ``[F, T, C]`` view: a
video frame, or one temporal slice on packed Qwen towers.

Position rule. Every slot keeps one *anchor*: the original token that was never merged away
(each step's destination keeps its slot, so the anchor is the destination of every merge into
it, and an unmerged token's own). Where attention depends on position (rotary towers, windowed
attention), the slot stands at its anchor's position: the strategy hands the anchors to the
target's adapter (``BlockAdapter.at``), which gives the slot the anchor's rotary angles (its
(h, w) on Qwen) and window; position-free towers ignore them. The metric stays the un-rotated
keys (content only).

Output modes. Stock pooling after the tower needs the full grid in raster order (LLaVA-OV's
27×27 bilinear resize, Qwen's 2×2 merger; docs/design.md §4), and merged tokens come out
in a data-dependent order. ``unmerge`` (default) therefore returns every layer's output copied
back to the grid (``grid[j] = x[owner[j]]``) and takes one copy per slot again on entry to the
next layer. That keeps the block contract (output shape == input shape), makes every
``hidden_states[l]`` a valid grid whatever ``vision_feature_layer`` a model picks, and is exact:
only copies move, attention and MLP still run on the merged tokens. ``compact`` leaves the
merged tokens (count ``N0 - Σ r_l``, order data-dependent): only for targets that accept fewer
tokens at this stage, so it declares ``changes_count`` and count-locked stages refuse it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field, NonNegativeInt, model_validator
from torch import Tensor

from ..api.strategy import BlockStrategy, StrategyParams
from ..api.types import BlockCall, Capability, ChunkInfo, StageInfo
from .tome_merge import (
    capped_r,
    match_bipartite,
    merge_owner,
    merge_wavg,
    parse_r,
    source_from_owner,
    unmerge_to_grid,
)

__all__ = ["ToMeParams", "ToMeState", "ToMeTraceRecord", "ToMe", "key_metric"]


class ToMeParams(StrategyParams):
    r: NonNegativeInt | list[NonNegativeInt]
    """Tokens removed per layer: one int for every layer, or a per-layer list (zero-padded to the
    tower's depth). Python callers may also pass the reference's ``(r, inflection)`` tuple; it is
    stored as ``r`` plus ``inflection``. Each step removes at most half of the unprotected tokens
    it sees, so a larger r is capped silently, as the reference does."""
    inflection: float | None = Field(None, ge=-1.0, le=1.0)
    """With an int ``r``: linear schedule from ``r(1 - inflection)`` to ``r(1 + inflection)`` per
    layer (-1 = the paper's decreasing schedule, 2r down to 0). YAML's way to write the tuple."""
    prop_attn: bool = True
    """Add ``log(size)`` to the attention logits of merged keys (the reference's timm default)."""
    class_token: bool = False
    """Protect position 0 (a CLS token) from merging; SigLIP towers have none."""
    distill_token: bool = False
    """Protect position 1 (DeiT's distillation token) as a merge destination; needs ``class_token``."""
    output: Literal["unmerge", "compact"] = "unmerge"
    """``unmerge``: every layer returns the full grid (stock pooling works). ``compact``: the merged
    tokens, fewer and in data-dependent order (only where the target accepts fewer tokens)."""

    @model_validator(mode="before")
    @classmethod
    def _split_tuple(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("r"), tuple):
            if len(data["r"]) != 2 or data.get("inflection") is not None:
                raise ValueError("r as a tuple is (r, inflection); do not also give inflection")
            data = {**data, "r": data["r"][0], "inflection": data["r"][1]}
        return data

    @model_validator(mode="after")
    def _check(self) -> ToMeParams:
        if self.inflection is not None and not isinstance(self.r, int):
            raise ValueError("inflection needs an int r (a per-layer list is already a schedule)")
        if self.distill_token and not self.class_token:
            raise ValueError(
                "distill_token without class_token is a degenerate reference configuration "
                "(position 0 merges away, the distill token can receive); set class_token too"
            )
        return self

    def schedule(self, num_layers: int) -> list[int]:
        """Per-layer r for a tower of ``num_layers`` layers (before the per-step cap)."""
        spec = self.r if self.inflection is None else (self.r, self.inflection)
        return parse_r(spec, num_layers)  # type: ignore[arg-type]


@dataclass
class ToMeTraceRecord:
    """What one layer did in one chunk; collected only when a test or a debugger sets ``trace``."""

    layer: int
    r: int
    """Tokens this layer really removed (after the cap)."""
    metric: Tensor
    """``[F, n, head_dim]`` float32 matching input."""
    x_after_merge: Tensor
    """``[F, n - r, C]`` residual stream right after the merge."""
    size: Tensor
    """``[F, n - r, 1]`` float32 sizes after this layer."""
    owner: Tensor
    """``[F, N0]`` slot of every original token after this layer."""
    out: Tensor
    """``[F, n - r, C]`` layer output before any un-merge to the grid."""
    anchor: Tensor | None = None
    """``[F, n - r]`` original position each slot stands at from the next layer on."""

    @property
    def source(self) -> Tensor:
        """``[F, n - r, N0]`` dense 0/1 source map."""
        return source_from_owner(self.owner, self.size.shape[1])


@dataclass
class ToMeState:
    """Scratch of one chunk's pass through the tower; a stream owns one, reset at every chunk."""

    size: Tensor | None = None
    """``[F, K, 1]`` float32 original tokens per current slot; None before the first merge."""
    owner: Tensor | None = None
    """``[F, N0]`` long: current slot of every original token; None before the first merge."""
    anchor: Tensor | None = None
    """``[F, K]`` long: original position of every slot's kept token (the one never merged away).
    Where the slot stands for the target's attention (:meth:`BlockAdapter.at`) and where it is
    read back from a grid (unmerge); None before the first merge."""
    trace: list[ToMeTraceRecord] | None = None

    def reset(self) -> None:
        self.size = self.owner = self.anchor = None

    @property
    def count(self) -> int | None:
        """Current tokens per frame, None while nothing has merged."""
        return None if self.size is None else self.size.shape[1]

    @property
    def source(self) -> Tensor | None:
        """``[F, K, N0]`` dense 0/1 source map, None while nothing has merged."""
        if self.owner is None or self.size is None:
            return None
        return source_from_owner(self.owner, self.size.shape[1])


def key_metric(k: Tensor, num_heads: int) -> Tensor:
    """Keys ``[F, n, H*D]`` averaged over heads -> ``[F, n, D]`` float32: ToMe's matching metric."""
    f, n, c = k.shape
    return k.float().view(f, n, num_heads, c // num_heads).mean(dim=2)


class ToMe(BlockStrategy):
    """ToMe (``pre_vit_block``): bipartite token merging inside every encoder layer.

    ``changes_count`` (and ``needs``) depend on the parameters, so they are set per instance:
    ``output="compact"`` changes the count, ``class_token=True`` needs a CLS token.
    """

    name = "tome"
    Params = ToMeParams
    stateful = False
    """The state is per-chunk scratch (sizes, owner map); nothing carries from chunk to chunk."""
    computes_layer = True
    dynamic_count = True  # with output: compact, the count left depends on the merges (and r caps)
    summary = "Token Merging: merge r similar tokens per ViT layer (bipartite soft matching on keys)"
    paper = "https://arxiv.org/abs/2210.09461"
    reference = "facebookresearch/ToMe (tome/merge.py, tome/patch/timm.py)"

    @classmethod
    def conformance_params(cls, info: StageInfo) -> dict[str, Any]:
        return {"r": max(1, info.tokens_per_frame // 8)}

    needs = frozenset({Capability.BLOCK_ADAPTER, Capability.SUBSET_ATTENTION})
    params: ToMeParams

    def __init__(self, params: ToMeParams | None = None, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.changes_count = self.params.output == "compact"  # type: ignore[misc]
        if self.params.class_token:
            self.needs = self.needs | {Capability.CLS_TOKEN}  # type: ignore[misc]

    @property
    def protected(self) -> int:
        return int(self.params.class_token) + int(self.params.distill_token)

    def tokens_out(self, tokens: int, num_layers: int) -> int:
        """Tokens per frame after ``num_layers`` layers in compact mode (each step's cap applied)."""
        for r in self.params.schedule(num_layers)[:num_layers]:
            tokens -= capped_r(r, tokens, self.protected)
        return tokens

    def new_state(self) -> ToMeState:
        return ToMeState()

    def start_chunk(self, state: ToMeState, chunk: ChunkInfo) -> None:
        """Sizes and sources describe one pass through the tower: forget the last chunk's."""
        state.reset()

    def block_forward(self, call: BlockCall, hidden: Tensor, run_next: Callable[[Tensor], Tensor]) -> Tensor:
        """Layer output for ``hidden`` ``[F, T, C]``; never calls ``run_next``.

        ``unmerge``: input and output are ``[F, N0, C]`` grids. ``compact``: ``[F, K, C]`` in,
        ``[F, K - r, C]`` out.
        """
        state: ToMeState = call.state
        p = self.params
        a = call.adapter
        if call.layer_index == 0:
            state.reset()  # a second pass over the same chunk must not inherit the first's sizes
        x = hidden
        if state.anchor is not None and p.output == "unmerge":
            if hidden.shape[1] != state.owner.shape[1]:  # type: ignore[union-attr]
                raise RuntimeError(
                    f"tome: layer {call.layer_index} got {hidden.shape[1]} tokens, not the grid"
                )
            x = torch.gather(hidden, 1, state.anchor[..., None].expand(-1, -1, hidden.shape[-1]))
        elif state.count is not None and hidden.shape[1] != state.count:
            raise RuntimeError(
                f"tome: layer {call.layer_index} got {hidden.shape[1]} tokens, but {state.count} are left"
            )

        h = a.ln1(x)
        q, k, v = a.q(h), a.k(h), a.v(h)
        bias = state.size[..., 0].log() if p.prop_attn and state.size is not None else None
        # merged slots attend at their anchor's position (rotary angles, window): the target's business
        placed = a if state.anchor is None else a.at(state.anchor)
        x = x + a.out(placed.attention(q, k, v, key_bias=bias))

        r = p.schedule(call.num_layers)[call.layer_index]
        removed = 0
        tracing = state.trace is not None
        metric = key_metric(k, a.num_heads) if r > 0 or tracing else None
        if r > 0:
            match = match_bipartite(metric, r, p.class_token, p.distill_token)
            size = state.size
            if size is None:
                size = torch.ones(*x.shape[:2], 1, dtype=torch.float32, device=x.device)
            if match is not None:
                removed = match.r
                # float32 sizes and sums: bf16 cannot hold counts above 256 exactly
                merged, size = merge_wavg(match.merge, x.float(), size)
                state.owner = merge_owner(match.unmerge, merged, state.owner)
                anchor = match.anchor_index()
                state.anchor = anchor if state.anchor is None else state.anchor.gather(1, anchor)
                x = merged.to(hidden.dtype)
            elif state.owner is None:
                state.owner = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
                state.anchor = state.owner
            state.size = size
        x_after_merge = x
        out = x + a.mlp(a.ln2(x))

        if tracing:
            # Every layer is recorded, merging or not (r = 0 keeps sizes and owners as they were:
            # ones and the identity before the first merge).
            n, dev = x_after_merge.shape[1], x.device
            size = state.size if state.size is not None else torch.ones(x.shape[0], n, 1, device=dev)
            owner = (
                state.owner if state.owner is not None else torch.arange(n, device=dev).expand(x.shape[0], -1)
            )
            state.trace.append(  # type: ignore[union-attr]
                ToMeTraceRecord(
                    call.layer_index, removed, metric, x_after_merge, size, owner, out, state.anchor
                )  # type: ignore[arg-type]
            )
        if p.output == "unmerge" and state.owner is not None:
            return unmerge_to_grid(out, state.owner)
        return out
