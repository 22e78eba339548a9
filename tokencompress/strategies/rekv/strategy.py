"""ReKV (Di et al., ICLR 2025): a sliding window plus sinks while encoding, every frame kept as a
block in host memory, and per-layer top-k retrieval of frames at each question.

The kernels and the list of reference quirks are in :mod:`tokencompress.strategies.rekv`. This module
binds them to a decoder: one :class:`ReKVLayer` per layer, fed by the patched attention with
the layer's pre-RoPE projections. At a question the bare question runs first through every
layer in retrieval mode (each layer picks its own frames with its own mean query, so layer l's
choice depends on the layers before it), then the prompt and the answer attend
``[sinks ; retrieved frames in time order ; prompt ; answer]`` with positions renumbered from 0.
The question leaves the memory exactly as it was.

Blocks are frames: ``block_size`` must be the number of tokens one frame has after the earlier
stages. A strategy that keeps a data-dependent count per frame (VidCom², ToMe with a
data-dependent output) is refused at build time rather than handled with variable blocks: the
reference's frame grid, its buffer bound ``topk * block_size <= n_local`` and its fixture
semantics all assume equal blocks. Default 1-D RoPE runs the reference's memory
(:mod:`.memory`); Qwen's 3-D M-RoPE (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) runs :mod:`.mrope`, where
retrieved frames get positions by :func:`tokencompress.api.memory_positions.retrieved_positions`
(each frame moved as a whole on all axes, frames back to back after the sinks, the question
after them) and a chunk's delimiter and timestamp rows travel with its frames. Other RoPE
variants (scaled, YaRN) are refused at build time.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ...api.errors import BudgetError, CompatibilityError
from ...api.kv_cache import DecoderLayout
from ...api.kv_cache_strategy import KVBuild, KVCacheStrategy
from ...api.strategy import Capability, StrategyParams
from ...api.target import Target
from . import ReKVSettings
from .memory import ReKVMemory
from .mrope import ReKVMRoPEMemory

__all__ = ["ReKV", "ReKVParams", "ReKVMemory", "ReKVMRoPEMemory"]


class ReKVParams(StrategyParams):
    n_local: int = Field(
        15000, ge=1, description="Sliding-window length in tokens while encoding (reference 15000)"
    )
    topk: int = Field(64, ge=1, description="Frames each layer retrieves per question (reference 64)")
    chunk_size: int = Field(1, ge=1, description="Retrieval granularity in consecutive frames (reference 1)")
    block_size: int | None = Field(
        None, ge=1, description="Tokens per frame; default: what one frame leaves pre_prefill with"
    )
    count_sinks_once: bool = Field(
        False, description="Fix quirk Q3: attend a sink still inside the window once, not twice"
    )
    similarity: Literal["dot", "cosine"] = Field(
        "dot", description="Block score: the reference's unnormalised dot product, or cosine (Q1)"
    )
    slab_blocks: int = Field(64, ge=1, description="Frames per host-memory slab of the block store")


class ReKV(KVCacheStrategy):
    """Sliding window + sinks while encoding; per-layer top-k frame retrieval at questions."""

    name = "rekv"
    hosts_decode_policy = True
    Params = ReKVParams
    needs = frozenset({Capability.PRE_ROPE_PROJECTIONS})
    summary = (
        "ReKV: window + attention sinks while encoding, frames in host memory, per-layer top-k retrieval"
    )
    paper = (
        "Di et al., Streaming Video Question-Answering with In-context Video KV-Cache Retrieval, ICLR 2025"
    )
    reference = "Becomebright/ReKV@63793f7"

    def block_size(self, build: KVBuild) -> int:
        p: ReKVParams = self.params  # type: ignore[assignment]
        if build.tokens_per_frame is None:
            raise CompatibilityError(
                f"stages.kv_cache: rekv stores one block per frame and needs the same token count for every "
                f"frame, but '{build.variable_count_by}' keeps a data-dependent number per frame; use a "
                f"fixed-budget pruner (stc_pruner, visionzip) before rekv"
            )
        if p.block_size is not None and p.block_size != build.tokens_per_frame:
            raise BudgetError(
                f"rekv.block_size = {p.block_size} does not match the {build.tokens_per_frame} tokens a frame has "
                f"after the earlier stages on target '{build.target}'; set block_size: {build.tokens_per_frame} "
                f"or leave it out"
            )
        return build.tokens_per_frame

    def check_build(self, build: KVBuild) -> None:
        p: ReKVParams = self.params  # type: ignore[assignment]
        if build.layout.rope_type not in ("default", "mrope"):
            raise CompatibilityError(
                f"stages.kv_cache: rekv supports default 1-D RoPE and Qwen's M-RoPE; target '{build.target}' "
                f"uses '{build.layout.rope_type}'"
            )
        if build.extra_tokens_per_chunk and build.layout.rope_type != "mrope":
            raise CompatibilityError(
                f"stages.kv_cache: rekv needs chunks made of whole frames, but target '{build.target}' adds "
                f"{build.extra_tokens_per_chunk} delimiter tokens per chunk"
            )
        bs = self.block_size(build)
        if p.n_local < bs:
            raise BudgetError(
                f"rekv.n_local = {p.n_local} is smaller than one frame's {bs} tokens; use n_local >= {bs}"
            )
        chunk = bs * build.frames_per_chunk
        if chunk > p.n_local:
            raise BudgetError(
                f"rekv.n_local = {p.n_local} is smaller than one chunk ({build.frames_per_chunk} frames x {bs} "
                f"tokens = {chunk}); raise n_local or lower stream.frames_per_chunk"
            )
        if p.topk * bs > p.n_local:
            raise BudgetError(
                f"rekv.topk = {p.topk} frames x {bs} tokens = {p.topk * bs} exceed n_local = {p.n_local}; "
                f"use topk <= {p.n_local // bs} or a larger n_local"
            )
        if p.topk % p.chunk_size:
            raise BudgetError(
                f"rekv.topk = {p.topk} is not a multiple of chunk_size = {p.chunk_size}; make it one"
            )

    @classmethod
    def position_bounding(cls, layout: DecoderLayout) -> dict[str, Any] | None:
        # encoding attends a window at fixed distances; questions renumber what they retrieve
        return {} if layout.rope_type in ("default", "mrope") else None

    def new_memory(self, target: Target, build: KVBuild) -> ReKVMemory:
        p: ReKVParams = self.params  # type: ignore[assignment]
        settings = ReKVSettings(
            n_init=None, n_local=p.n_local, block_size=self.block_size(build), topk=p.topk,
            chunk_size=p.chunk_size, count_sinks_once=p.count_sinks_once, similarity=p.similarity,
            slab_blocks=p.slab_blocks,
        )  # fmt: skip
        memory = ReKVMRoPEMemory if build.layout.rope_type == "mrope" else ReKVMemory
        return memory(settings, target, build.layout)

    @classmethod
    def conformance_params(cls, info) -> dict:  # type: ignore[no-untyped-def]
        return {"n_local": 64 * info.tokens_per_frame, "topk": 4}
