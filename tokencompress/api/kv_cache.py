"""The ``kv_cache`` stage contract: what a target exposes of its decoder, and when strategies act.

Unlike the three token stages, ``kv_cache`` does not transform a :class:`VisualTokens`. A
:class:`~tokencompress.api.kv_cache_strategy.KVCacheStrategy` gives every stream a memory object
(:class:`~tokencompress.api.kv_cache_strategy.KVMemory`) that decides what the decoder keeps and attends to:

* **encoding** (:attr:`Phase.ENCODE`): the system prompt and every chunk's kept visual tokens are
  prefilled; the memory may trim the cache after each chunk (``after_encode``) or, with
  ``custom_attention``, compute each layer's attention itself from pre-RoPE projections;
* **retrieval** (:attr:`Phase.RETRIEVE`): at a question, before the prompt, the memory may run
  the bare question through the decoder to choose what the answer sees (ReKV);
* **answering** (:attr:`Phase.ANSWER`): the prompt and the decoded tokens; afterwards the memory
  must be exactly as before the question (``end_question``).

A target opts in with :meth:`~tokencompress.api.target.Target.decoder_layout` (the attention modules
of its decoder, the names of their projections, head counts, RoPE) and names the kv_cache
strategies it can run in ``kv_cache_strategies``; a pipeline refuses any other at build time.
Strategies with ``custom_attention`` are called, per layer and per decoder call, as
``memory.attend(layer, q, k, v)`` with batch-free pre-RoPE ``q`` ``[H, L, d]`` and ``k, v``
``[kvh, L, d]``, and return ``[L, H * d]`` (the input of ``o_proj``). Observers see one
``StageEvent`` per chunk at ``kv_cache`` (tokens prefilled in, tokens resident out).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from torch import nn

__all__ = ["Phase", "DecoderLayout"]


class Phase(str, Enum):
    """What the decoder call a memory sees is doing."""

    ENCODE = "encode"
    RETRIEVE = "retrieve"
    ANSWER = "answer"


@dataclass(frozen=True)
class DecoderLayout:
    """A target's decoder as the kv_cache stage sees it."""

    attention: tuple[nn.Module, ...]
    """Each decoder layer's self-attention module, in layer order."""
    q_proj: str
    k_proj: str
    v_proj: str
    o_proj: str
    """Attribute names of the projections on each attention module (pre-RoPE outputs, bias included)."""
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    rope_type: str
    """``"default"`` for plain 1-D RoPE, ``"mrope"`` for Qwen2-VL's 3-D sections, else the config's type."""
    max_positions: int
    """The model's ``max_position_embeddings``: positions it was trained for."""
    q_norm: str | None = None
    k_norm: str | None = None
    """Per-head norms applied to the projections before RoPE (Qwen3's ``q_norm``/``k_norm``), if any."""

    @property
    def num_layers(self) -> int:
        return len(self.attention)

    def projections(self, layer: int) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
        attn = self.attention[layer]
        return tuple(getattr(attn, name) for name in (self.q_proj, self.k_proj, self.v_proj, self.o_proj))  # type: ignore[return-value]
