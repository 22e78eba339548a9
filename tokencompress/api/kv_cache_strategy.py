"""The ``kv_cache`` strategy base: what a method decides about the decoder's memory of a stream.

A :class:`KVCacheStrategy` is an immutable recipe like every strategy; what changes while a
stream runs lives in the :class:`KVMemory` it opens per stream (contract in
:mod:`tokencompress.api.kv_cache`). Build-time checks see a :class:`KVBuild`: the target's
decoder layout and the token layout the earlier stages leave per frame.
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor
from transformers import DynamicCache

from .errors import ConfigError
from .kv_cache import DecoderLayout, Phase
from .strategy import Strategy
from .types import Stage

if TYPE_CHECKING:
    from .target import LLMState, Target

__all__ = ["KVBuild", "KVCacheStrategy", "KVMemory", "MemoryCache"]


@dataclass(frozen=True)
class KVBuild:
    """What a kv_cache strategy may check when a pipeline is bound to a model."""

    target: str
    layout: DecoderLayout
    tokens_per_frame: int | None
    """Visual tokens one frame leaves ``pre_prefill`` with; None when a strategy keeps a data-dependent count."""
    variable_count_by: str | None
    """The strategy that makes the count data-dependent (for error messages)."""
    frames_per_chunk: int
    extra_tokens_per_chunk: int = 0
    """Tokens the target prefills around each chunk's visual tokens (Qwen's vision delimiters)."""


class KVMemory:
    """One stream's decoder memory. The defaults are the stock behaviour (keep everything)."""

    custom_attention: ClassVar[bool] = False
    """True when :meth:`attend` computes every decoder layer's attention (pre-RoPE inputs)."""
    bounds_positions: ClassVar[bool] = True
    """True when positions stay bounded however long the stream runs (no position-limit check)."""
    logs_positions: ClassVar[bool] = False
    """True when the memory reads ``LLMState.position_log`` (every prefill's position ids)."""
    wants_visual_rows: ClassVar[bool] = False
    """True when the memory needs :meth:`visual_rows` before each chunk (which rows are visual tokens)."""
    replaces_cache: ClassVar[bool] = False
    """True when the memory replaces cache tensors before a chunk's prefill (a compression); a failed
    chunk then puts every layer's tensors back instead of cropping the cache (stream/decoder_state.py)."""
    decode_step: Any = None
    """With ``custom_attention``: the pipeline's decode policy while an answer decodes, a
    :class:`~tokencompress.api.decode_policy.DecodeStep` (None otherwise);
    such a memory calls :meth:`~tokencompress.api.decode_policy.DecodeStep.keys` at every layer of a
    one-token answer call and attends to the entries it returns."""
    stores_on_device: ClassVar[bool] = False
    """True when the stored tokens stay on the compute device (counted in :meth:`device_bytes`) rather
    than in host memory: ``stored_bytes`` then adds no host bytes to the stream's footprint."""

    def __init__(self) -> None:
        self.phase = Phase.ENCODE

    def make_cache(self, target: Target) -> DynamicCache:
        """The cache object the stream's :class:`LLMState` holds."""
        return DynamicCache(config=target.model.config.get_text_config())

    def new_llm_state(self, target: Target) -> LLMState:
        """The stream's LLM state (cache from :meth:`make_cache`; position log when ``logs_positions``)."""
        from .target import LLMState

        return LLMState(cache=self.make_cache(target), position_log=[] if self.logs_positions else None)

    def before_prefill(self, llm: LLMState, kind: str, tokens: int) -> None:  # noqa: B027 - optional hook
        """Called before every encode-time prefill: ``kind`` is ``"text"`` or ``"frames"``; refuse
        (a one-line :class:`~tokencompress.api.errors.TokenCompressError`) what the memory cannot hold."""

    def visual_rows(self, llm: LLMState, rows: Tensor) -> None:  # noqa: B027 - optional hook
        """With ``wants_visual_rows``: called before a chunk's :meth:`before_prefill` with the ``[L]`` bool
        mask of the rows its prefill appends (True: a visual token; False: delimiters, timestamp text)."""

    def after_encode(self, llm: LLMState) -> None:  # noqa: B027 - optional hook
        """Called after every encode-time prefill (system prompt, each chunk)."""

    def retrieve(self, target: Target, llm: LLMState, ids: Tensor, frames: list[int] | None = None) -> None:
        """Called before the question's prompt with the bare question ids ``[L]`` (and caller-given frames)."""
        if frames is not None:
            raise ConfigError(f"ask(frames=...): {type(self).__name__} does not retrieve frames; use rekv")

    def end_question(self, llm: LLMState) -> None:  # noqa: B027 - optional hook
        """Called after the answer (also on failure): leave the memory exactly as before the question."""

    def visual_slots(self, llm: LLMState, appended: Tensor) -> Tensor:
        """``[llm.length]`` bool after :meth:`after_encode`: which cache entries hold video tokens, given
        ``appended``, the mask of what the stream has prefilled (before this memory dropped anything).
        The default (nothing dropped) returns ``appended``; a memory that drops entries and sets
        ``hosts_decode_policy`` on its strategy maps the mask the way it cut the cache."""
        return appended

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not compute attention itself")

    def resident_tokens(self, llm: LLMState) -> int:
        """Tokens the decoder's attention cache holds on the compute device (per layer)."""
        return llm.length

    def stored_tokens(self) -> int:
        """Tokens per layer kept outside the attention cache (a host block store)."""
        return 0

    def stored_bytes(self, allocated: bool = False) -> int:
        """Bytes of the stored tokens, all layers (``allocated``: of the whole slabs held); host bytes
        unless ``stores_on_device``."""
        return 0

    def device_bytes(self, llm: LLMState) -> int:
        """Bytes of cache tensors on the compute device, all layers."""
        return sum(
            t.numel() * t.element_size()
            for layer in llm.cache.layers
            for t in (getattr(layer, "keys", None), getattr(layer, "values", None))
            if isinstance(t, Tensor)
        )

    def memory_stats(self) -> dict[str, Any]:
        """What the memory did so far, for the ``run`` table and ``--json`` (empty: nothing to report)."""
        return {}

    def retrieved(self) -> list[list[int]] | None:
        """Frames each layer retrieved at the last question (None when the method does not retrieve)."""
        return None

    # ------------------------------------------------------------ transactions
    def snapshot(self) -> Any:
        """Everything a chunk can change in this memory, for :meth:`restore`.

        A stream takes one before every chunk (and text prefill) and restores it when the chunk
        fails, so the memory is exactly as on a stream that never saw the chunk. The default deep
        copies the memory's fields: correct for any memory, cheap for small ones. A memory holding
        a large store overrides both methods with something cheaper (ReKV keeps its block count
        and trims back to it). A snapshot is restored at most once.
        """
        return copy.deepcopy(self.__dict__)

    def restore(self, snapshot: Any) -> None:
        """Put the memory back exactly as :meth:`snapshot` saw it."""
        self.__dict__.clear()
        self.__dict__.update(snapshot)


class MemoryCache(DynamicCache):
    """A ``DynamicCache`` that routes the patched attention to a stream's :class:`KVMemory`.

    It is never written: the patched attention hands the projections to ``memory`` instead of
    calling ``update``, so ``get_seq_length`` stays 0 and masks stay tiny.
    """

    def __init__(self, memory: KVMemory, config: Any) -> None:
        super().__init__(config=config)
        self.memory = memory


class KVCacheStrategy(Strategy):
    """A ``kv_cache`` method. Subclasses implement :meth:`new_memory` and may refine :meth:`check_build`."""

    stage = Stage.KV_CACHE
    changes_count = False
    stateful = True
    per_layer_lengths: ClassVar[bool] = False
    """True when the memory works on a cache whose layers hold different numbers of entries (an
    in_decoder strategy drops tokens from the layers past its boundaries; the memory then reads
    which entries each layer holds from ``LLMState.in_decoder``). False: refused with one at build time."""
    hosts_decode_policy: ClassVar[bool] = False
    """True when a decode policy (:mod:`tokencompress.api.decode_policy`) can run on this memory's answers:
    its memory maps the visual entries (:meth:`KVMemory.visual_slots`) or, with ``custom_attention``,
    routes one-token answer calls through :attr:`KVMemory.decode_step`."""

    def check_build(self, build: KVBuild) -> None:  # noqa: B027 - optional hook
        """Refuse, at build time, parameters this target and token layout cannot run."""

    @classmethod
    def position_bounding(cls, layout: DecoderLayout) -> dict[str, Any] | None:
        """The parameters with which this strategy's memory bounds positions on a decoder of this
        layout (``{}``: its defaults), or None when no setting does. A stream refused at the model's
        ``max_position_embeddings`` suggests exactly the strategies that return a dict (with those
        parameters), so a strategy says so here only if its memory then sets ``bounds_positions``."""
        return None

    @abstractmethod
    def new_memory(self, target: Target, build: KVBuild) -> KVMemory:
        """A fresh memory for one stream. The tokens prefilled before the first frame (the system
        prompt) are the stream's sinks; memories learn their count in ``before_prefill``."""
