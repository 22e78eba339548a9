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
block and the config's own value put back on exit. Every other case (CUDA, where the masked GQA
kernel falls back to the math path; decoding one token; no mask; other attention kinds) runs the
stock ``sdpa`` function unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward

__all__ = ["NAME", "grouped_kv_attention", "sdpa_grouped_kv"]

NAME = "tokencompress_sdpa_grouped_kv"


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
    stock = (
        query.device.type != "cpu"
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


@contextmanager
def grouped_kv_attention(decoder: nn.Module | None) -> Iterator[bool]:
    """Run ``decoder`` (a transformers decoder whose config selects ``sdpa``) with
    :func:`sdpa_grouped_kv` for the ``with`` block; yields whether it was switched. Decoders on
    another attention implementation, or with no config, are left alone."""
    config = getattr(decoder, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        yield False
        return
    _register()
    config._attn_implementation = NAME
    try:
        yield True
    finally:
        config._attn_implementation = "sdpa"
