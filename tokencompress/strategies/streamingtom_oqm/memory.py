"""One stream's StreamingTOM memory (OQM) on a 1-D RoPE decoder: an :class:`OQMLayer` per layer.

The patched attention hands every layer's pre-RoPE projections to :meth:`StreamingTomOqmMemory.attend`,
which routes them by phase: text before the first frame joins the raw prompt, every chunk attends
``[prompt ; window]`` and is stored as groups, a question's bare text picks each layer's groups
(the retrieval pass), then the prompt and the answer attend ``[prompt ; retrieved groups]``. The
M-RoPE variant (:mod:`.mrope`) adds the 3-D positions Qwen's decoders need.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

from ...api.errors import ConfigError
from ...api.kv_cache import DecoderLayout, Phase
from ...api.kv_cache_strategy import KVMemory, MemoryCache
from ...api.target import LLMState, Target
from .layer import OQMLayer, OQMSettings, QuestionInfo

__all__ = ["StreamingTomOqmMemory"]


class StreamingTomOqmMemory(KVMemory):
    """One stream's OQM memory: an :class:`OQMLayer` per decoder layer and what questions did."""

    custom_attention = True
    stores_on_device = True
    layer_class: ClassVar[type[OQMLayer]] = OQMLayer
    shared: ClassVar[tuple[str, ...]] = ()
    """Fields a snapshot neither copies nor restores (references to the stream's own state)."""

    def __init__(
        self, settings: OQMSettings, target: Target, layout: DecoderLayout, frame_groups: int
    ) -> None:
        super().__init__()
        freqs = target.rope_inv_freq()
        self.settings = settings
        self.bounds_positions = settings.positions == "window"  # type: ignore[misc]
        self.frame_groups = frame_groups
        self.layers = [
            self.layer_class(
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
        skip = ("layers", *self.shared)
        fields = {k: copy.copy(v) for k, v in self.__dict__.items() if k not in skip}
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
