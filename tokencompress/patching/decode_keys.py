"""Per-layer key selection at decode steps, for a pipeline with a decode policy (``dycoke_kv``).

A decode policy (:mod:`tokencompress.api.decode_policy`) chooses, at every decode step, which cache
entries the later decoder layers attend to. On a stock cache (no memory, ``sliding_window``,
``infinipot_v``) the attention a decoder layer runs gets post-RoPE queries ``[B, H, 1, d]`` and the
whole cache's post-RoPE keys and values ``[B, kvh, S, d]`` after the step's own entry was appended,
through transformers' attention interface. This patch registers one stateless function there that
wraps whatever implementation the decoder's config selected (``sdpa``, the grouped-K/V function of
:mod:`.decoder_attention`, ``eager``) and selects it for the ``with`` block, like that module does:
for a call from a thread that is answering with a :class:`~tokencompress.api.decode_policy.DecodeStep`
(:meth:`DecodeKeys.answering`) and one query token, the deciding layer's probabilities
``softmax(q . k^T * scaling)`` (float32, every query head, no mask) go to the policy, and the layers
after it attend to the chosen keys only (gathered with their values and mask columns; positions are
the ones the keys were rotated at, so nothing is renumbered). Every other call runs the wrapped
function unchanged, so the model is not switched to eager attention and a plain ``generate`` next
to a stream is untouched. On exit the config and the modules are exactly as before.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ..api.decode_policy import DecodeStep
from .overrides import Overrides

__all__ = ["DecodeKeys", "decode_probabilities"]

OWNER = "_tokencompress_decode_keys"
LAYER = "_tokencompress_decode_layer"


def decode_probabilities(query: Tensor, key: Tensor, scaling: float) -> Tensor:
    """``[H, S]`` float32 attention probabilities of one query token (``query`` ``[1, H, 1, d]``,
    ``key`` ``[1, kvh, S, d]``; query head ``h`` reads KV head ``h // (H / kvh)``), no mask."""
    heads, kvh = query.shape[1], key.shape[1]
    k = key[0].float().repeat_interleave(heads // kvh, dim=0)  # [H, S, d]
    logits = torch.einsum("hd,hsd->hs", query[0, :, 0].float(), k) * scaling
    return torch.softmax(logits, dim=-1)


def _wrapped(name: str) -> Callable[..., Any]:
    def attention(
        module: nn.Module,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attention_mask: Tensor | None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        owner: DecodeKeys | None = getattr(module, OWNER, None)
        inner = owner.inner(module) if owner is not None else _stock(name, module)
        step = owner.step_of_this_thread() if owner is not None else None
        if step is not None and query.shape[0] == 1 and query.shape[2] == 1:
            scaling = kwargs.get("scaling") or getattr(module, "scaling", query.shape[-1] ** -0.5)
            visual = owner.visual_of_this_thread()  # type: ignore[union-attr]
            length = key.shape[2]
            keep = step.keys(
                getattr(module, LAYER),
                length,
                lambda: decode_probabilities(query, key, scaling),
                lambda: _pad(visual, length),
            )
            if keep is not None:
                keep = keep.to(key.device)
                key, value = key.index_select(2, keep), value.index_select(2, keep)
                if attention_mask is not None and attention_mask.shape[-1] == length:
                    attention_mask = attention_mask.index_select(-1, keep)
        return inner(module, query, key, value, attention_mask, *args, **kwargs)

    return attention


def _pad(visual: Tensor, length: int) -> Tensor:
    """The cache's visual mask at the question, extended with the prompt and answer (not visual)."""
    out = torch.zeros(length, dtype=torch.bool)
    n = min(visual.numel(), length)
    out[:n] = visual[:n]
    return out


def _stock(name: str, module: nn.Module) -> Callable[..., Any]:
    """The attention function registered as ``name``, or the module's own eager one."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if name in ALL_ATTENTION_FUNCTIONS:
        return ALL_ATTENTION_FUNCTIONS[name]
    return sys.modules[type(module).__module__].eager_attention_forward  # type: ignore[no-any-return]


class DecodeKeys:
    """Routes the decoder's attention through the decode policy of the answering thread (if any)."""

    def __init__(self, decoder: nn.Module | None, attention: Sequence[nn.Module], active: bool) -> None:
        self.decoder = decoder
        self.attention = tuple(attention)
        self.active = active and decoder is not None and getattr(decoder, "config", None) is not None
        self.switched = False
        self.previous = ""
        self._overrides = Overrides("decode_keys")
        self._steps: dict[int, tuple[DecodeStep, Tensor]] = {}
        self._lock = threading.Lock()

    @property
    def installed(self) -> bool:
        return self.switched

    def __enter__(self) -> DecodeKeys:
        if not self.active:
            return self
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

        config = self.decoder.config  # type: ignore[union-attr]
        self.previous = str(config._attn_implementation)
        name = f"tokencompress_decode_policy_over_{self.previous}"
        AttentionInterface.register(name, _wrapped(self.previous))
        if self.previous in ALL_MASK_ATTENTION_FUNCTIONS:
            AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[self.previous])
        self._overrides.set_value(config, "_attn_implementation", name)
        for i, module in enumerate(self.attention):
            self._overrides.set(module, OWNER, self)
            self._overrides.set(module, LAYER, i)
        self.switched = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._overrides.restore()
        self.switched = False

    def inner(self, module: nn.Module) -> Callable[..., Any]:
        return _stock(self.previous, module)

    @contextmanager
    def answering(self, step: DecodeStep, visual: Tensor) -> Iterator[None]:
        """The calling thread's decode steps go through ``step``; ``visual`` ``[S0]`` bool: the cache's
        visual entries when the question starts (later entries are the prompt and the answer)."""
        me = threading.get_ident()
        with self._lock:
            self._steps[me] = (step, visual.to("cpu", torch.bool))
        try:
            yield
        finally:
            with self._lock:
                self._steps.pop(me, None)

    def step_of_this_thread(self) -> DecodeStep | None:
        found = self._steps.get(threading.get_ident())
        return found[0] if found is not None else None

    def visual_of_this_thread(self) -> Tensor:
        return self._steps[threading.get_ident()][1]
