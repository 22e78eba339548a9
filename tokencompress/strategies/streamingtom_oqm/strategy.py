"""``streamingtom_oqm``: StreamingTOM's online quantised memory as a ``kv_cache`` strategy.

One :class:`~.layer.OQMLayer` per decoder layer, fed by the patched attention with the layer's
pre-RoPE projections (``custom_attention``). Encoding: text before the first frame is the raw
prompt; every chunk attends ``[prompt ; window]`` and is stored as 2- or 4-bit groups. A question:
the bare question runs first through every layer (each layer picks its own groups, so layer l's
choice depends on the layers before it), then the prompt and the answer attend ``[prompt ; retrieved
groups ; prompt ; answer]``. The question leaves the memory exactly as it was.

Groups are whole parts of a frame (``group_size`` divides the tokens a frame leaves ``pre_prefill``
with; by default one group is one frame, as with CTR ahead of it), so a strategy that keeps a
data-dependent count per frame is refused at build time. Default 1-D RoPE runs the reference's
memory (:mod:`.memory`); Qwen's 3-D M-RoPE (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) runs :mod:`.mrope`, where
the encoding window and the retrieved groups are placed by
:func:`tokencompress.api.memory_positions.retrieved_positions` and a chunk's delimiter and timestamp
rows travel with its frames (kept unquantised). Other RoPE variants are refused at build time.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ...api.errors import BudgetError, CompatibilityError
from ...api.kv_cache_strategy import KVBuild, KVCacheStrategy
from ...api.strategy import Capability, StrategyParams
from ...api.target import Target
from .layer import OQMSettings
from .memory import StreamingTomOqmMemory
from .mrope import OQMMRoPEMemory
from .retrieval import budget_groups

__all__ = ["OQMMRoPEMemory", "StreamingTomOqm", "StreamingTomOqmMemory", "StreamingTomOqmParams"]


class StreamingTomOqmParams(StrategyParams):
    group_size: int | None = Field(
        None, ge=1, description="Tokens per quantisation and retrieval group; default: one frame's tokens"
    )
    bits: Literal[2, 4] = Field(4, description="Bits per stored code (2 or 4)")
    window_tokens: int = Field(
        4800, ge=1, description="W: stored tokens a new chunk attends while encoding (whole groups)"
    )
    retrieval_max_tokens: int = Field(
        12544, ge=1, description="B: retrieval budget in tokens, rounded up to whole groups per layer"
    )
    positions: Literal["window", "absolute"] = Field(
        "window", description="Chunk positions: the reference's n_init + len(window), or stream positions"
    )
    retrieval_pass: Literal["reference", "consistent"] = Field(
        "reference",
        description="Question's retrieval pass: the reference's double rotation and upper-left mask, or "
        "question at P.. over the memory as stored",
    )
    slab_groups: int = Field(256, ge=1, description="Groups per slab of each layer's store")


class StreamingTomOqm(KVCacheStrategy):
    """Window while encoding, past frames as 2/4-bit groups, per-layer cosine retrieval at questions."""

    name = "streamingtom_oqm"
    Params = StreamingTomOqmParams
    needs = frozenset({Capability.PRE_ROPE_PROJECTIONS})
    summary = "StreamingTOM OQM: window while encoding, 4-bit groups in memory, per-layer retrieval of groups"
    paper = (
        "Chen et al., StreamingTOM: Streaming Token Compression for Efficient Video Understanding, CVPR 2026"
    )
    reference = "YIGE24/StreamingTOM@6c66b05"

    def group_size(self, build: KVBuild) -> int:
        p: StreamingTomOqmParams = self.params  # type: ignore[assignment]
        tpf = build.tokens_per_frame
        if tpf is None:
            raise CompatibilityError(
                f"stages.kv_cache: streamingtom_oqm stores every frame as whole groups and needs the same token "
                f"count for every frame, but '{build.variable_count_by}' keeps a data-dependent number per frame; "
                f"use a fixed-budget strategy (streamingtom_ctr, stc_pruner, visionzip) before it"
            )
        g = p.group_size or tpf
        if tpf % g:
            raise BudgetError(
                f"streamingtom_oqm.group_size = {g} does not divide the {tpf} tokens a frame has after the earlier "
                f"stages on target '{build.target}'; use a divisor of {tpf} (or leave it out: one group a frame)"
            )
        per_byte = 8 // p.bits
        if g % per_byte:
            raise BudgetError(
                f"streamingtom_oqm.group_size = {g} is not a multiple of the {per_byte} codes one byte holds at "
                f"bits = {p.bits}; use a multiple of {per_byte} such as {-(-g // per_byte) * per_byte}"
            )
        return g

    def check_build(self, build: KVBuild) -> None:
        p: StreamingTomOqmParams = self.params  # type: ignore[assignment]
        if build.layout.rope_type not in ("default", "mrope"):
            raise CompatibilityError(
                f"stages.kv_cache: streamingtom_oqm supports default 1-D RoPE and Qwen's M-RoPE; target "
                f"'{build.target}' uses '{build.layout.rope_type}'"
            )
        if build.extra_tokens_per_chunk and build.layout.rope_type != "mrope":
            raise CompatibilityError(
                f"stages.kv_cache: streamingtom_oqm needs chunks made of whole frames, but target "
                f"'{build.target}' adds {build.extra_tokens_per_chunk} delimiter tokens per chunk"
            )
        g = self.group_size(build)
        if p.window_tokens % g:
            raise BudgetError(
                f"streamingtom_oqm.window_tokens = {p.window_tokens} is not a multiple of the group size {g}; "
                f"use a multiple such as {max(g, p.window_tokens // g * g)}"
            )

    def new_memory(self, target: Target, build: KVBuild) -> StreamingTomOqmMemory:
        p: StreamingTomOqmParams = self.params  # type: ignore[assignment]
        g = self.group_size(build)
        settings = OQMSettings(
            group_size=g, bits=p.bits, window=p.window_tokens,
            budget_groups=budget_groups(p.retrieval_max_tokens, g), positions=p.positions,
            retrieval_pass=p.retrieval_pass, slab_groups=p.slab_groups,
        )  # fmt: skip
        assert build.tokens_per_frame is not None
        memory = OQMMRoPEMemory if build.layout.rope_type == "mrope" else StreamingTomOqmMemory
        return memory(settings, target, build.layout, build.tokens_per_frame // g)

    @classmethod
    def conformance_params(cls, info) -> dict:  # type: ignore[no-untyped-def]
        return {"window_tokens": 4 * info.tokens_per_frame, "retrieval_max_tokens": 2 * info.tokens_per_frame}
