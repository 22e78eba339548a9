"""Decoder attention that reads grouped K/V in place on CPU, for a pipeline's ``with`` block.

A Qwen2-style decoder has fewer key/value heads than query heads (Qwen2-0.5B: 14 queries share 2).
transformers' ``sdpa`` attention lets torch's kernel read the shared heads only when no mask is
passed; a chunk prefilled after a cache needs the causal mask, so it copies every cached key and
value once per query head group (``repeat_kv``) in every layer of every chunk, a copy that grows
with the stream and costs about as much as the attention itself at ten thousand cached tokens.
torch's CPU kernel takes the mask and the grouped heads together (``enable_gqa``) and gives the
same values bit for bit, so inside a pipeline the decoder runs that call instead.

The mechanism is transformers' own extension point: one stateless function registered under
:data:`NAME` (attention and mask interfaces), selected by the decoder's config for the ``with``
block and the config's own value put back on exit. The config is shared by every thread that uses
the model, so the switch is scoped like the encoder's block routing: each attention module gets an
instance attribute naming the :class:`GroupedKVAttention` that owns the block, and the function
reads the grouped heads in place only for calls from a thread inside that owner's
:meth:`~GroupedKVAttention.calls` (a stream's prefill or answer); any other thread (a plain
``generate`` next to a stream) runs the stock ``sdpa`` function. So does every other case (CUDA,
where the masked GQA kernel falls back to the math path; decoding one token; no mask; other
attention kinds).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from .overrides import Overrides

__all__ = ["NAME", "GroupedKVAttention", "sdpa_grouped_kv"]

NAME = "tokencompress_sdpa_grouped_kv"
OWNER = "_tokencompress_grouped_kv"
"""Instance attribute of each attention module inside the ``with`` block: its owner."""


def sdpa_grouped_kv(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """``[B, L, H, d]`` attention output, as transformers' ``sdpa_attention_forward`` returns it.

    ``query`` ``[B, H, L, d]``, ``key``/``value`` ``[B, H_kv, S, d]``, ``attention_mask``
    ``[B, 1, L, S]`` (bool or additive).
    """
    groups = getattr(module, "num_key_value_groups", 1)
    owner = getattr(module, OWNER, None)
    stock = (
        owner is None
        or not owner.routes_this_thread()
        or query.device.type != "cpu"
        or groups <= 1
        or attention_mask is None
        or query.shape[2] == 1
        or key.shape[-1] != value.shape[-1]
        or any(kwargs.get(k) is not None for k in ("position_bias", "softcap"))
        or kwargs.get("output_attentions", False)
    )
    if stock:
        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            is_causal=is_causal,
            **kwargs,
        )
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, enable_gqa=True
    )
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, sdpa_grouped_kv)
    AttentionMaskInterface.register(NAME, sdpa_mask)


class GroupedKVAttention:
    """Selects :func:`sdpa_grouped_kv` on ``decoder`` (a transformers decoder whose config selects
    ``sdpa``) for a ``with`` block, for the threads inside :meth:`calls` only. Decoders on another
    attention implementation, or with no config, are left alone (``switched`` stays False)."""

    def __init__(self, decoder: nn.Module | None) -> None:
        self.decoder = decoder
        self.switched = False
        self._overrides = Overrides("grouped_kv")
        self._threads: Counter[int] = Counter()
        self._lock = threading.Lock()

    def __enter__(self) -> GroupedKVAttention:
        config = getattr(self.decoder, "config", None)
        if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
            return self
        assert self.decoder is not None
        _register()
        self._overrides.set_value(config, "_attn_implementation", NAME)
        for module in self.decoder.modules():
            if hasattr(module, "num_key_value_groups"):
                self._overrides.set(module, OWNER, self)
        self.switched = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._overrides.restore()
        self.switched = False

    @contextmanager
    def calls(self) -> Iterator[None]:
        """The calling thread's decoder calls read grouped K/V in place for the block (re-entrant)."""
        me = threading.get_ident()
        with self._lock:
            self._threads[me] += 1
        try:
            yield
        finally:
            with self._lock:
                self._threads[me] -= 1
                if not self._threads[me]:
                    del self._threads[me]

    def routes_this_thread(self) -> bool:
        return threading.get_ident() in self._threads
