"""Reversible routing of decoder self-attention through a stream's kv_cache memory.

For memories with ``custom_attention`` (ReKV), each attention module of the decoder gets an
instance ``forward`` for the ``with`` block: when the call's cache is a :class:`MemoryCache`, it
runs the target-named q/k/v projections (pre-RoPE, bias included), hands them to the memory and
applies ``o_proj`` to what it returns; any other call (other streams, other pipelines, plain
``generate``) runs the stock forward. Reading the projections inside the forward, rather than
with forward hooks on them, computes each projection once, and the stock attention (RoPE, mask,
cache update) has to be replaced anyway. On exit the modules are exactly as they were.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from ..api.errors import TokenCompressError
from ..api.kv_cache import DecoderLayout
from ..api.kv_cache_strategy import MemoryCache

__all__ = ["KVPatch"]

_MISSING = object()


class KVPatch:
    """Installs the memory-routing forward on every attention module of ``layout`` (if ``active``)."""

    def __init__(self, layout: DecoderLayout | None, active: bool) -> None:
        self.layout = layout
        self.active = active and layout is not None
        self._saved: list[Any] = []
        self.installed = False

    def __enter__(self) -> KVPatch:
        if not self.active:
            return self
        assert self.layout is not None
        for attn in self.layout.attention:
            if getattr(attn.forward, "__tokencompress_kv__", None) is not None:
                raise TokenCompressError(
                    "this model is already inside a tokencompress apply(); leave it first"
                )
        self._saved = [attn.__dict__.get("forward", _MISSING) for attn in self.layout.attention]
        for i, attn in enumerate(self.layout.attention):
            attn.forward = types.MethodType(self._make_forward(i, attn.forward), attn)
        self.installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.installed:
            return
        assert self.layout is not None
        for attn, saved in zip(self.layout.attention, self._saved, strict=True):
            if saved is _MISSING:
                del attn.forward
            else:
                attn.forward = saved
        self._saved = []
        self.installed = False

    def _make_forward(self, index: int, stock: Callable[..., Any]) -> Callable[..., Any]:
        layout = self.layout
        assert layout is not None
        q_proj, k_proj, v_proj, o_proj = layout.projections(index)
        heads, kvh, d = layout.num_heads, layout.num_kv_heads, layout.head_dim

        def forward(_attn: nn.Module, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Any:
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            if not isinstance(cache, MemoryCache):
                return stock(hidden_states, *args, **kwargs)
            if hidden_states.shape[0] != 1:
                raise TokenCompressError("kv_cache memories run batch 1 only (one stream per call)")
            length = hidden_states.shape[1]
            q = q_proj(hidden_states)[0].view(length, heads, d).transpose(0, 1)
            k = k_proj(hidden_states)[0].view(length, kvh, d).transpose(0, 1)
            v = v_proj(hidden_states)[0].view(length, kvh, d).transpose(0, 1)
            out = cache.memory.attend(index, q, k, v)
            return o_proj(out[None].to(hidden_states.dtype)), None

        forward.__tokencompress_kv__ = self  # type: ignore[attr-defined]
        return forward
