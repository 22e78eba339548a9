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
semantics all assume equal blocks. Only 1-D default RoPE is supported (Qwen-VL's M-RoPE is
refused by those targets, with the reason).
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
from pydantic import Field

from ...api.errors import BudgetError, CompatibilityError, ConfigError
from ...api.kv_cache import DecoderLayout, Phase
from ...api.kv_cache_strategy import KVBuild, KVCacheStrategy, KVMemory, MemoryCache
from ...api.strategy import Capability, StrategyParams
from ...api.target import LLMState, Target
from . import QuestionInfo, ReKVLayer, ReKVSettings
from .answer_probs import answer_probabilities

__all__ = ["ReKV", "ReKVParams", "ReKVMemory"]


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


class ReKVMemory(KVMemory):
    """One stream's ReKV memory: a :class:`ReKVLayer` per decoder layer."""

    custom_attention = True

    def __init__(self, settings: ReKVSettings, target: Target, layout: DecoderLayout) -> None:
        super().__init__()
        freqs = target.rope_inv_freq()
        self.settings = settings
        self.layers = [
            ReKVLayer(
                settings,
                layout.num_heads,
                layout.num_kv_heads,
                layout.head_dim,
                freqs,
                target.dtype,
                target.device,
            )
            for _ in range(layout.num_layers)
        ]
        self.external: list[int] | None = None
        self.infos: list[QuestionInfo | None] = [None] * layout.num_layers

    def snapshot(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The question-time fields (small) and each layer's own snapshot (block counts, not blocks)."""
        fields = {k: copy.deepcopy(v) for k, v in self.__dict__.items() if k != "layers"}
        return fields, [layer.snapshot() for layer in self.layers]

    def restore(self, snapshot: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
        fields, layers = snapshot
        for layer, saved in zip(self.layers, layers, strict=True):
            layer.restore(saved)
        self.__dict__.update(fields)

    def make_cache(self, target: Target) -> MemoryCache:
        return MemoryCache(self, target.model.config.get_text_config())

    def before_prefill(self, llm: LLMState, kind: str, tokens: int) -> None:
        started = self.layers[0].n_init is not None
        if kind == "frames":
            for mem in self.layers:
                mem.close_sinks()
        elif started:
            raise ConfigError(
                "rekv: text prefilled after the first frame would break its frame grid (blocks are frames); "
                "prefill text before the first frame, or ask a question (its tokens are never stored)"
            )

    def attend(self, layer: int, q, k, v):  # type: ignore[no-untyped-def]
        mem = self.layers[layer]
        if self.phase is Phase.ENCODE:
            return mem.encode(q, k, v)
        if self.phase is Phase.RETRIEVE:
            out, self.infos[layer] = mem.question(q, k, v, self.external)
            return out
        step = self.decode_step
        if step is not None and q.shape[1] == 1 and mem.answer_k is not None:
            length = mem.answer_k.shape[1] + 1
            keep = step.keys(
                layer,
                length,
                lambda: answer_probabilities(mem, q, k),
                lambda: torch.cat((mem.answer_visual, torch.zeros(1, dtype=torch.bool))),
            )
            return mem.answer(q, k, v, keep)
        return mem.answer(q, k, v)

    def retrieve(self, target: Target, llm: LLMState, ids, frames: list[int] | None = None) -> None:  # type: ignore[no-untyped-def, override]
        """The retrieval pass: the bare question through every layer; lm_head skipped (Q8)."""
        self.external = None
        if frames is not None:
            first = self.layers[0]
            try:
                self.external = first.external_ids(frames, first.candidates()[1]).tolist()
            except ValueError as exc:
                raise ConfigError(f"ask(frames=...): {exc}") from None
        self.infos = [None] * len(self.layers)
        self.phase = Phase.RETRIEVE
        try:
            target.prefill(llm, target.embed(ids), target.text_positions(llm, ids.numel()), logits=False)
        finally:
            self.phase = Phase.ANSWER

    def end_question(self, llm: LLMState) -> None:
        for mem in self.layers:
            mem.end_answer()
        self.phase = Phase.ENCODE
        self.external = None

    def resident_tokens(self, llm: LLMState) -> int:
        return self.layers[0].resident_tokens() if self.layers else 0

    def stored_tokens(self) -> int:
        return len(self.layers[0].store) * self.settings.block_size if self.layers else 0

    def stored_bytes(self, allocated: bool = False) -> int:
        return sum(mem.store.nbytes() if allocated else mem.store.used_bytes() for mem in self.layers)

    def device_bytes(self, llm: LLMState) -> int:
        return sum(mem.device_bytes() for mem in self.layers)

    def retrieved(self) -> list[list[int]] | None:
        if any(info is None for info in self.infos):
            return None
        return [info.retrieved.tolist() for info in self.infos if info is not None]


class ReKV(KVCacheStrategy):
    """Sliding window + sinks while encoding; per-layer top-k frame retrieval at questions."""

    name = "rekv"
    hosts_decode_policy = True
    Params = ReKVParams
    needs = frozenset({Capability.PRE_ROPE_PROJECTIONS, Capability.ROPE_1D})
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
        if build.layout.rope_type != "default":
            raise CompatibilityError(
                f"stages.kv_cache: rekv supports default 1-D RoPE only; target '{build.target}' uses "
                f"'{build.layout.rope_type}'"
            )
        if build.extra_tokens_per_chunk:
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

    def new_memory(self, target: Target, build: KVBuild) -> ReKVMemory:
        p: ReKVParams = self.params  # type: ignore[assignment]
        settings = ReKVSettings(
            n_init=None, n_local=p.n_local, block_size=self.block_size(build), topk=p.topk,
            chunk_size=p.chunk_size, count_sinks_once=p.count_sinks_once, similarity=p.similarity,
            slab_blocks=p.slab_blocks,
        )  # fmt: skip
        return ReKVMemory(settings, target, build.layout)

    @classmethod
    def conformance_params(cls, info) -> dict:  # type: ignore[no-untyped-def]
        return {"n_local": 64 * info.tokens_per_frame, "topk": 4}
