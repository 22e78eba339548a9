"""Reversible routing of decoder self-attention through a stream's kv_cache memory.

For memories with ``custom_attention`` (ReKV), each attention module of the decoder gets an
instance ``forward`` for the ``with`` block: when the call's cache is a :class:`MemoryCache`, it
runs the target-named q/k/v projections (pre-RoPE, bias included, then the per-head
``q_norm``/``k_norm`` where the decoder has them, as Qwen3's does), hands them to the memory and
applies ``o_proj`` to what it returns; any other call (other streams, other pipelines, plain
``generate``) runs the stock forward. Reading the projections inside the forward, rather than
with forward hooks on them, computes each projection once, and the stock attention (RoPE, mask,
cache update) has to be replaced anyway. On exit the modules are exactly as they were.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from ..api.errors import TokenCompressError
from ..api.kv_cache import DecoderLayout
from ..api.kv_cache_strategy import MemoryCache
from .overrides import Overrides, refuse_nested

__all__ = ["KVPatch"]


class KVPatch:
    """Installs the memory-routing forward on every attention module of ``layout`` (if ``active``)."""

    def __init__(self, layout: DecoderLayout | None, active: bool) -> None:
        self.layout = layout
        self.active = active and layout is not None
        self._overrides = Overrides("kv")

    @property
    def installed(self) -> bool:
        return self._overrides.installed

    def __enter__(self) -> KVPatch:
        if not self.active:
            return self
        assert self.layout is not None
        refuse_nested(self.layout.attention)
        for i, attn in enumerate(self.layout.attention):
            self._overrides.forward(attn, self._make_forward(i, attn.forward))
        return self

    def __exit__(self, *exc: object) -> None:
        self._overrides.restore()

    def _make_forward(self, index: int, stock: Callable[..., Any]) -> Callable[..., Any]:
        layout = self.layout
        assert layout is not None
        q_proj, k_proj, v_proj, o_proj = layout.projections(index)
        heads, kvh, d = layout.num_heads, layout.num_kv_heads, layout.head_dim
        attn = layout.attention[index]
        q_norm = getattr(attn, layout.q_norm) if layout.q_norm else None
        k_norm = getattr(attn, layout.k_norm) if layout.k_norm else None

        def forward(_attn: nn.Module, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Any:
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            if not isinstance(cache, MemoryCache):
                return stock(hidden_states, *args, **kwargs)
            if hidden_states.shape[0] != 1:
                raise TokenCompressError("kv_cache memories run batch 1 only (one stream per call)")
            length = hidden_states.shape[1]
            q = q_proj(hidden_states)[0].view(length, heads, d)
            k = k_proj(hidden_states)[0].view(length, kvh, d)
            q = (q if q_norm is None else q_norm(q)).transpose(0, 1)  # Qwen3: per-head norm before RoPE
            k = (k if k_norm is None else k_norm(k)).transpose(0, 1)
            v = v_proj(hidden_states)[0].view(length, kvh, d).transpose(0, 1)
            out = cache.memory.attend(index, q, k, v)
            return o_proj(out[None].to(hidden_states.dtype)), None

        return forward
