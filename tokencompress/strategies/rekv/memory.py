"""One stream's ReKV memory on a 1-D RoPE decoder: a :class:`ReKVLayer` per decoder layer.

The patched attention hands every layer's pre-RoPE projections to :meth:`ReKVMemory.attend`,
which routes them by phase: encoding (window + sinks, frames into the block store), the
retrieval pass of a question (each layer picks its frames), the answer. The M-RoPE variant
(:mod:`.mrope`) adds the positions the decoder's 3-D rotary needs.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
from torch import Tensor

from ...api.errors import ConfigError
from ...api.kv_cache import DecoderLayout, Phase
from ...api.kv_cache_strategy import KVMemory, MemoryCache
from ...api.target import LLMState, Target
from .answer_probs import answer_probabilities
from .layer import QuestionInfo, ReKVLayer, ReKVSettings

__all__ = ["ReKVMemory"]


class ReKVMemory(KVMemory):
    """One stream's ReKV memory: a :class:`ReKVLayer` per decoder layer."""

    custom_attention = True
    layer_class: ClassVar[type[ReKVLayer]] = ReKVLayer
    appended: ClassVar[tuple[str, ...]] = ()
    """List fields that only grow while encoding: a snapshot keeps their length, not a copy."""
    shared: ClassVar[tuple[str, ...]] = ()
    """Fields a snapshot neither copies nor restores (references to the stream's own state)."""

    def __init__(self, settings: ReKVSettings, target: Target, layout: DecoderLayout) -> None:
        super().__init__()
        freqs = target.rope_inv_freq()
        self.settings = settings
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
        self.external: list[int] | None = None
        self.infos: list[QuestionInfo | None] = [None] * layout.num_layers

    def snapshot(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The question-time fields (small) and each layer's own snapshot (block counts, not blocks)."""
        skip = {"layers", *self.appended, *self.shared}
        fields = {k: copy.deepcopy(v) for k, v in self.__dict__.items() if k not in skip}
        fields.update({k: len(getattr(self, k)) for k in self.appended})
        return fields, [layer.snapshot() for layer in self.layers]

    def restore(self, snapshot: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
        fields, layers = snapshot
        for layer, saved in zip(self.layers, layers, strict=True):
            layer.restore(saved)
        for name in self.appended:
            del getattr(self, name)[fields.pop(name) :]
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
        return self._answer(layer, q, k, v)

    def _answer(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """A prompt or decode step on layer ``layer``'s answer cache; at a decode step a decode policy
        (DyCoke's) may choose which entries it attends, from this layer's own answer attention."""
        mem, step = self.layers[layer], self.decode_step
        if (
            step is not None
            and q.shape[1] == 1
            and mem.answer_k is not None
            and mem.answer_visual is not None
        ):
            visual = mem.answer_visual
            keep = step.keys(
                layer,
                mem.answer_k.shape[1] + 1,
                lambda: answer_probabilities(mem, q, k),
                lambda: torch.cat((visual, torch.zeros(1, dtype=torch.bool))),
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
