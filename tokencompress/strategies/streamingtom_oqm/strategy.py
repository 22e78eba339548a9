"""``streamingtom_oqm``: StreamingTOM's online quantised memory as a ``kv_cache`` strategy.

One :class:`~.layer.OQMLayer` per decoder layer, fed by the patched attention with the layer's
pre-RoPE projections (``custom_attention``). Encoding: text before the first frame is the raw
prompt; every chunk attends ``[prompt ; window]`` and is stored as 2- or 4-bit groups. A question:
the bare question runs first through every layer (each layer picks its own groups, so layer l's
choice depends on the layers before it), then the prompt and the answer attend ``[prompt ; retrieved
groups ; prompt ; answer]``. The question leaves the memory exactly as it was.

Groups are whole parts of a frame (``group_size`` divides the tokens a frame leaves ``pre_prefill``
with; by default one group is one frame, as with CTR ahead of it), so a strategy that keeps a
data-dependent count per frame is refused at build time. Only 1-D default RoPE: the position rules
(:mod:`.positions`) have no meaning on Qwen's M-RoPE, which those targets refuse with the reason.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import Field

from ...api.errors import BudgetError, CompatibilityError, ConfigError
from ...api.kv_cache import DecoderLayout, Phase
from ...api.kv_cache_strategy import KVBuild, KVCacheStrategy, KVMemory, MemoryCache
from ...api.strategy import Capability, StrategyParams
from ...api.target import LLMState, Target
from .layer import OQMLayer, OQMSettings, QuestionInfo
from .retrieval import budget_groups

__all__ = ["StreamingTomOqm", "StreamingTomOqmParams", "StreamingTomOqmMemory"]


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


class StreamingTomOqmMemory(KVMemory):
    """One stream's OQM memory: an :class:`OQMLayer` per decoder layer and what questions did."""

    custom_attention = True
    stores_on_device = True

    def __init__(
        self, settings: OQMSettings, target: Target, layout: DecoderLayout, frame_groups: int
    ) -> None:
        super().__init__()
        freqs = target.rope_inv_freq()
        self.settings = settings
        self.bounds_positions = settings.positions == "window"  # type: ignore[misc]
        self.frame_groups = frame_groups
        self.layers = [
            OQMLayer(
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
        self.started = False  # a frame was prefilled: text can no longer join the prompt
        self.infos: list[QuestionInfo | None] = [None] * layout.num_layers
        self.questions = 0
        self.retrieved_groups: list[int] = []
        """Groups the layers retrieved at each question (the same count in every layer)."""

    def snapshot(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        fields = {k: copy.copy(v) for k, v in self.__dict__.items() if k != "layers"}
        return fields, [layer.snapshot() for layer in self.layers]

    def restore(self, snapshot: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
        fields, layers = snapshot
        for layer, saved in zip(self.layers, layers, strict=True):
            layer.restore(saved)
        self.__dict__.update({k: copy.copy(v) for k, v in fields.items()})

    def make_cache(self, target: Target) -> MemoryCache:
        return MemoryCache(self, target.model.config.get_text_config())

    def before_prefill(self, llm: LLMState, kind: str, tokens: int) -> None:
        if kind == "frames":
            g = self.settings.group_size
            if tokens % g:
                raise ConfigError(
                    f"streamingtom_oqm: a chunk of {tokens} tokens is not whole groups of group_size {g}"
                )
            self.started = True
        elif self.started:
            raise ConfigError(
                "streamingtom_oqm: text prefilled after the first frame cannot join the raw prompt and is not "
                "a frame's groups; prefill text before the first frame, or ask a question (never stored)"
            )

    def attend(self, layer: int, q, k, v):  # type: ignore[no-untyped-def]
        mem = self.layers[layer]
        if self.phase is Phase.ENCODE:
            return mem.encode_chunk(q, k, v) if self.started else mem.encode_prompt(q, k, v)
        if self.phase is Phase.RETRIEVE:
            out, self.infos[layer] = mem.question(q, k, v)
            return out
        return mem.answer(q, k, v)

    def retrieve(self, target: Target, llm: LLMState, ids, frames: list[int] | None = None) -> None:  # type: ignore[no-untyped-def, override]
        """The retrieval pass: the bare question through every layer (no logits)."""
        if frames is not None:
            raise ConfigError(
                "ask(frames=...): streamingtom_oqm retrieves groups by the question itself; use rekv for "
                "caller-given frames"
            )
        self.infos = [None] * len(self.layers)
        self.phase = Phase.RETRIEVE
        try:
            target.prefill(llm, target.embed(ids), target.text_positions(llm, ids.numel()), logits=False)
        finally:
            self.phase = Phase.ANSWER
        self.questions += 1
        first = self.infos[0]
        self.retrieved_groups.append(0 if first is None else int(first.selection.indices.numel()))

    def end_question(self, llm: LLMState) -> None:
        for mem in self.layers:
            mem.end_answer()
        self.phase = Phase.ENCODE

    # -------------------------------------------------------------- footprint
    def resident_tokens(self, llm: LLMState) -> int:
        """The prompt plus what the next chunk attends (the window), or the answer cache."""
        if not self.layers:
            return 0
        first = self.layers[0]
        if first.answer_k is not None:
            return first.answer_k.shape[1]
        return first.n_init + first.stored_tokens - first.window_start() * self.settings.group_size

    def stored_tokens(self) -> int:
        return self.layers[0].stored_tokens if self.layers else 0

    def stored_bytes(self, allocated: bool = False) -> int:
        """Bytes of the quantised store (codes, scales, minima), all layers."""
        return sum(mem.quantized_bytes() for mem in self.layers)

    def device_bytes(self, llm: LLMState) -> int:
        return sum(mem.device_bytes() for mem in self.layers)

    def memory_stats(self) -> dict[str, Any]:
        return {
            "quantized_bytes": self.stored_bytes(),
            "group_key_bytes": sum(mem.key_bytes() for mem in self.layers),
            "stored_groups": len(self.layers[0].store) if self.layers else 0,
            "bits": self.settings.bits,
            "questions": self.questions,
            "retrieved_groups_per_question": list(self.retrieved_groups),
        }

    def retrieved(self) -> list[list[int]] | None:
        """Frames each layer retrieved at the last question (a frame counts once any group of it came)."""
        if not self.infos or any(info is None for info in self.infos):
            return None
        per = self.frame_groups
        return [
            sorted({int(g) // per for g in info.selection.indices.tolist()}) for info in self.infos if info
        ]


class StreamingTomOqm(KVCacheStrategy):
    """Window while encoding, past frames as 2/4-bit groups, per-layer cosine retrieval at questions."""

    name = "streamingtom_oqm"
    Params = StreamingTomOqmParams
    needs = frozenset({Capability.PRE_ROPE_PROJECTIONS, Capability.ROPE_1D})
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
        if build.layout.rope_type != "default":
            raise CompatibilityError(
                f"stages.kv_cache: streamingtom_oqm supports default 1-D RoPE only; target '{build.target}' uses "
                f"'{build.layout.rope_type}'"
            )
        if build.extra_tokens_per_chunk:
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
        return StreamingTomOqmMemory(settings, target, build.layout, build.tokens_per_frame // g)

    @classmethod
    def conformance_params(cls, info) -> dict:  # type: ignore[no-untyped-def]
        return {"window_tokens": 4 * info.tokens_per_frame, "retrieval_max_tokens": 2 * info.tokens_per_frame}
