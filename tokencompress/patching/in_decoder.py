"""Reversible hooks that run an in_decoder strategy (FastV, PyramidDrop) inside the decoder's forward.

What is installed for a pipeline's ``with`` block, and nothing else:

* a forward pre-hook (``with_kwargs=True``) on decoder layer 0, which opens the call's run when the
  calling thread is inside a stream's :meth:`InDecoderPatch.scope`, and on every layer from the first
  boundary on. transformers 5's decoder loop hands every layer the same full-length
  ``position_embeddings``, ``position_ids`` and mask, so each of these hooks hands its layer the
  call's current (gathered, possibly renumbered) ones and a causal mask built from that layer's own
  key count: the cache of a layer past a boundary is shorter than layer 0's (per-layer lengths);
* an attention function registered with transformers' ``AttentionInterface`` and selected by the
  decoder config for the block. It calls the implementation the config had (``sdpa``, ``eager``,
  the grouped-K/V one) and, on the one layer a FastV boundary ranks from, first reads the post-RoPE
  query rows it needs and every key: one softmax row per ranking row, so the decoder is never
  switched to eager attention and no ``[L, L]`` map is kept. A PyramidDrop boundary calls layer
  ``ℓ``'s own attention module once on the boundary's normed hidden states without a cache; the
  function reads q and k there and stops the call before the values are used (the cost is that
  layer's q/k/v projections once per boundary).

Threads outside a scope (a plain ``generate`` next to a stream) run the stock decoder. The run of a
call lives in a thread-local of this patch; the stream's bookkeeping (:class:`InDecoderState`) lives
on its LLM state.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

from ..api.errors import TokenCompressError
from ..api.in_decoder import DecoderStack, InDecoderState, InDecoderStrategy, Span
from .in_decoder_run import CallRun, Preview
from .overrides import Overrides, mark, refuse_nested

__all__ = ["InDecoderPatch", "NAME_PREFIX", "Preview", "in_decoder_attention"]

NAME_PREFIX = "tokencompress_in_decoder__"
OWNER = "_tokencompress_in_decoder"
"""Instance attribute of each attention module inside the ``with`` block: the patch that owns it."""


def _eager_of(module: nn.Module) -> Any:
    own = importlib.import_module(type(module).__module__)
    fn = getattr(own, "eager_attention_forward", None)
    if fn is None:
        from transformers.models.llama.modeling_llama import eager_attention_forward as fn
    return fn


def in_decoder_attention(
    module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None, **kwargs: Any
) -> Any:
    """The attention implementation the decoder had, after the owning patch has read what it ranks with."""
    from transformers import AttentionInterface

    owner: InDecoderPatch | None = getattr(module, OWNER, None)
    inner = owner.inner if owner is not None else "sdpa"
    if owner is not None:
        owner.observe(module, query, key)
    fn = AttentionInterface().get_interface(inner, _eager_of(module))
    return fn(module, query, key, value, attention_mask, **kwargs)


def _register(inner: str) -> str:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    name = NAME_PREFIX + inner
    AttentionInterface.register(name, in_decoder_attention)
    if inner in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[inner])
    return name


class InDecoderPatch:
    """Installs an in_decoder strategy's hooks on ``stack`` for a ``with`` block (inactive without one)."""

    def __init__(
        self, stack: DecoderStack | None, strategy: InDecoderStrategy | None, decoder: nn.Module | None
    ) -> None:
        self.stack = stack
        self.strategy = strategy
        self.decoder = decoder
        self.active = stack is not None and strategy is not None and decoder is not None
        self.bounds = strategy.boundaries(stack.num_layers) if self.active else ()  # type: ignore[union-attr]
        self.inner = stack.attention if stack is not None else "sdpa"
        self._overrides = Overrides("in_decoder")
        self._handles: list[Any] = []
        self._local = threading.local()
        self.record = False
        """Keep each boundary's input hidden states on the run (tests and diagnostics)."""

    @property
    def installed(self) -> bool:
        return bool(self._handles)

    def __enter__(self) -> InDecoderPatch:
        if not self.active:
            return self
        assert self.stack is not None and self.decoder is not None
        refuse_nested(self.stack.layers)
        config = self.decoder.config
        self.inner = str(getattr(config, "_attn_implementation", None) or "eager")
        self._overrides.set_value(config, "_attn_implementation", _register(self.inner))
        for layer in self.stack.layers:
            self._overrides.set(layer.self_attn, OWNER, self)
        first = self.bounds[0].layer
        for index, layer in enumerate(self.stack.layers):
            if index == 0 or index >= first:
                hook = mark(self._hook(index), "in_decoder")
                self._handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        while self._handles:
            self._handles.pop().remove()
        self._overrides.restore()

    # ------------------------------------------------------------------ scopes
    def _scopes(self) -> list[tuple[Any, Sequence[Span] | None]]:
        scopes = getattr(self._local, "scopes", None)
        if scopes is None:
            scopes = self._local.scopes = []
        return scopes

    @contextmanager
    def scope(
        self,
        state: InDecoderState | Callable[[], InDecoderState] | None,
        spans: Sequence[Span] | None = None,
    ) -> Iterator[None]:
        """The calling thread's decoder calls in the block belong to the stream whose bookkeeping is
        ``state`` (or what the callable returns at each call: a stream's restore replaces the object;
        re-entrant). ``spans`` (offline use) are the visual spans of every call in the block; without
        them a call takes the chunks ``state.pending`` announces."""
        if state is None or not self.active:
            yield
            return
        scopes = self._scopes()
        scopes.append((state, spans))
        try:
            yield
        finally:
            scopes.pop()
            if not scopes:
                self._local.run = None

    def last_run(self) -> CallRun | None:
        """The calling thread's latest decoder call inside a scope (for tests and statistics)."""
        return getattr(self._local, "last", None)

    # ------------------------------------------------------------------ hooks
    def _hook(self, index: int) -> Any:
        def hook(_layer: nn.Module, args: tuple, kwargs: dict) -> Any:
            if index == 0:
                self._local.run = self._local.last = self._start(args, kwargs)
            run: CallRun | None = getattr(self._local, "run", None)
            if run is None:
                return None
            return run.enter(index, args, kwargs)

        return hook

    def _start(self, args: tuple, kwargs: dict) -> CallRun | None:
        scopes = self._scopes()
        if not scopes:
            return None
        assert self.strategy is not None and self.stack is not None
        state, spans = scopes[-1]
        state = state() if callable(state) else state
        hidden = args[0] if args else kwargs["hidden_states"]
        if hidden.shape[0] != 1:
            raise TokenCompressError(
                f"in_decoder strategy '{self.strategy.name}' runs one stream per decoder call (batch 1), got a "
                f"batch of {hidden.shape[0]}"
            )
        length = hidden.shape[1]
        if spans is None:
            spans = self._take_pending(state, length)
        return CallRun(self, state, list(spans), kwargs, length)

    def _take_pending(self, state: InDecoderState, length: int) -> list[Span]:
        from ..api.in_decoder import spans_of

        state.pending = [m for m in state.pending if m.numel()]  # a chunk pruned whole prefills nothing
        if not state.pending:
            return []
        rows = sum(m.numel() for m in state.pending)
        if rows != length:
            raise RuntimeError(
                f"in_decoder: {len(state.pending)} chunk(s) announced {rows} rows, but the decoder call has {length}"
            )
        spans = spans_of(state.pending)
        state.pending = []
        return spans

    def observe(self, module: nn.Module, query: Tensor, key: Tensor) -> None:
        run: CallRun | None = getattr(self._local, "run", None)
        if run is not None:
            run.observe(module, query, key)
