"""One decoder layer's StreamingTOM memory (OQM): the raw prompt, the quantised store, the window.

Batch-free tensors: queries ``[H, L, d]``, keys and values ``[kvh, L, d]``; queries and keys come in
pre-RoPE (the memory rotates them at the positions :mod:`.positions` gives). The life of a stream:

* :meth:`encode_prompt`: text before the first frame (the system prompt) is kept raw, keys rotated;
* :meth:`encode_chunk`: the chunk attends ``[prompt ; window]`` (the window: the newest stored
  tokens, at most ``W``, read back from the quantised store) plus itself, causally; then its keys
  (rotated) and values are quantised as one storage batch and its group keys (pre-RoPE means) kept;
* :meth:`question`: the bare question picks this layer's groups (cosine of group keys with its mean
  query, the budget rounded up to groups), the answer cache becomes ``[prompt ; retrieved groups]``
  (dequantised, keys as stored) and the question attends it as the retrieval pass does;
* :meth:`answer`: the prompt and each decoded token attend ``[answer cache ; own]`` and extend it;
* :meth:`end_answer` drops the answer cache; questions never change the store.

The window rule walks the storage batches from the newest: whole batches while their sum stays
within ``W``, then the last ``(W - sum) // G`` groups of the next older batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .attention import attend
from .positions import answer_positions, chunk_positions, question_positions, rope
from .quant import dequantize, quantize
from .retrieval import Selection, group_keys, query_repr, select_groups
from .store import QUANT_FIELDS, GroupStore

__all__ = ["OQMSettings", "OQMLayer", "QuestionInfo"]


@dataclass(frozen=True)
class OQMSettings:
    """Per-layer parameters (their meaning: :class:`~.strategy.StreamingTomOqmParams`)."""

    group_size: int
    bits: int = 4
    window: int = 4800
    budget_groups: int = 251
    positions: str = "window"
    retrieval_pass: str = "reference"
    slab_groups: int = 256


@dataclass(frozen=True)
class QuestionInfo:
    """What one layer did for a question."""

    selection: Selection
    query_repr: Tensor
    retrieved: int
    """``P``: prompt tokens plus retrieved tokens, where the answer prompt starts."""


class OQMLayer:
    """The memory of one layer of one stream."""

    def __init__(
        self,
        settings: OQMSettings,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        freqs: Tensor,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        self.cfg = settings
        self.heads, self.kvh, self.d = num_heads, num_kv_heads, head_dim
        self.freqs = freqs.to(device)
        self.dtype, self.device = dtype, torch.device(device)
        empty = torch.zeros(num_kv_heads, 0, head_dim, dtype=dtype, device=self.device)
        self.init_k, self.init_v = empty, empty.clone()
        self.store = GroupStore(settings.slab_groups)
        self.answer_k: Tensor | None = None
        self.answer_v: Tensor | None = None

    # ------------------------------------------------------------------ state
    @property
    def n_init(self) -> int:
        return self.init_k.shape[1]

    @property
    def stored_tokens(self) -> int:
        return len(self.store) * self.cfg.group_size

    def snapshot(self) -> dict[str, Any]:
        """Fields by reference (tensors are replaced, never written) and the store's counts."""
        fields = dict(self.__dict__)
        fields["store"] = self.store.snapshot()
        return fields

    def restore(self, snapshot: dict[str, Any]) -> None:
        fields = dict(snapshot)
        self.store.restore(fields.pop("store"))
        self.__dict__.update(fields)

    def window_start(self) -> int:
        """First stored group of the encoding window."""
        g, room = self.cfg.group_size, self.cfg.window
        start = len(self.store)
        for groups in reversed(self.store.batches):
            if groups * g <= room:
                room -= groups * g
                start -= groups
                continue
            start -= room // g
            break
        return start

    def groups_kv(self, ids: Tensor | None = None, start: int = 0) -> tuple[Tensor, Tensor]:
        """Dequantised keys and values ``[kvh, m * G, d]`` of groups ``ids`` (or ``start..``)."""
        g, bits = self.cfg.group_size, self.cfg.bits
        m = (len(self.store) - start) if ids is None else ids.numel()
        if m == 0:
            return self.init_k[:, :0], self.init_v[:, :0]
        rows = self.store.span(start) if ids is None else self.store.gather(ids)
        out = []
        for side in ("k", "v"):
            packed = rows[f"{side}_packed"].transpose(0, 1)  # [kvh, m, G/p, d]
            scales, mins = rows[f"{side}_scales"].transpose(0, 1), rows[f"{side}_mins"].transpose(0, 1)
            x = dequantize(packed.reshape(self.kvh, -1, self.d), scales, mins, g, bits)
            out.append(x.to(self.device))
        return out[0], out[1]

    def window(self) -> tuple[Tensor, Tensor]:
        """``[prompt ; newest <= W stored tokens]``: what the next chunk attends as its past."""
        k, v = self.groups_kv(start=self.window_start())
        return torch.cat((self.init_k, k.to(self.dtype)), 1), torch.cat((self.init_v, v.to(self.dtype)), 1)

    def next_positions(self, length: int, window_tokens: int) -> Tensor:
        return chunk_positions(
            self.n_init, window_tokens, self.stored_tokens, length, self.cfg.positions, self.device
        )

    # --------------------------------------------------------------- encoding
    def encode_prompt(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Text before the first frame: attends the prompt so far, then joins it (raw)."""
        pos = torch.arange(self.n_init, self.n_init + q.shape[1], device=q.device)
        kr = rope(k, pos, self.freqs).to(self.dtype)
        keys, values = torch.cat((self.init_k, kr), 1), torch.cat((self.init_v, v.to(self.dtype)), 1)
        out = attend(rope(q, pos, self.freqs), keys, values)
        self.init_k, self.init_v = keys, values
        return out

    def encode_chunk(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """A chunk of whole groups over ``[prompt ; window]`` and itself; then stored."""
        past_k, past_v = self.window()
        pos = self.next_positions(q.shape[1], past_k.shape[1] - self.n_init)
        kr = rope(k, pos, self.freqs).to(self.dtype)
        keys, values = torch.cat((past_k, kr), 1), torch.cat((past_v, v.to(self.dtype)), 1)
        out = attend(rope(q, pos, self.freqs), keys, values)
        self.store_chunk(k, kr, v.to(self.dtype))
        return out

    def store_chunk(self, k_pre: Tensor, k_rot: Tensor, v: Tensor) -> None:
        """Quantise one chunk (``[kvh, L, d]``, ``L`` whole groups) as a storage batch."""
        g, bits = self.cfg.group_size, self.cfg.bits
        n = k_rot.shape[1] // g
        if n * g != k_rot.shape[1]:
            raise ValueError(
                f"streamingtom_oqm: a chunk of {k_rot.shape[1]} tokens is not whole groups of {g}"
            )
        rows: dict[str, Tensor] = {"keys": group_keys(k_pre, g)}
        for side, x in (("k", k_rot), ("v", v)):
            qz = quantize(x, g, bits)
            rows[f"{side}_packed"] = qz.packed.reshape(self.kvh, n, g * bits // 8, self.d).transpose(0, 1)
            rows[f"{side}_scales"] = qz.scales.transpose(0, 1)
            rows[f"{side}_mins"] = qz.mins.transpose(0, 1)
        self.store.add({name: t.contiguous() for name, t in rows.items()})

    # --------------------------------------------------------------- questions
    def select(self, q: Tensor) -> tuple[Selection, Tensor]:
        """This layer's groups for pre-RoPE question queries ``[H, Lq, d]`` (and the representative)."""
        rep = query_repr(q, self.kvh)
        n = len(self.store)
        keys = self.store.span(0, ("keys",))["keys"] if n else rep.new_zeros(0, rep.numel())
        return select_groups(keys.to(rep.device), rep, self.cfg.budget_groups), rep

    def retrieve(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """``[prompt ; dequantised groups ids]`` keys and values, keys as stored."""
        k, v = self.groups_kv(ids)
        return torch.cat((self.init_k, k.to(self.dtype)), 1), torch.cat((self.init_v, v.to(self.dtype)), 1)

    def question(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, QuestionInfo]:
        """Select, start the answer cache, run the retrieval pass; returns ``[Lq, H * d]`` and the info."""
        sel, rep = self.select(q)
        mem_k, mem_v = self.retrieve(sel.indices)
        self.answer_k, self.answer_v = mem_k, mem_v
        return self.retrieval_attention(q, k, v, mem_k, mem_v), QuestionInfo(sel, rep, mem_k.shape[1])

    def retrieval_attention(self, q: Tensor, k: Tensor, v: Tensor, mem_k: Tensor, mem_v: Tensor) -> Tensor:
        """The retrieval pass of pre-RoPE question ``q, k, v`` over a retrieved memory (rotated keys)."""
        at = question_positions(mem_k.shape[1], q.shape[1], self.cfg.retrieval_pass, q.device)
        if at.memory is not None:
            mem_k = rope(mem_k, at.memory, self.freqs)
        keys = torch.cat((mem_k.to(torch.float32), rope(k, at.question_keys, self.freqs)), 1)
        values = torch.cat((mem_v.to(torch.float32), v.to(torch.float32)), 1)
        return attend(rope(q, at.query, self.freqs), keys, values, at.align)

    def answer(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """A prompt or decode step over the answer cache, which keeps the step's KV."""
        if self.answer_k is None or self.answer_v is None:
            raise RuntimeError(
                "streamingtom_oqm: prompt/decode step without a question (call question() first)"
            )
        pos = answer_positions(self.answer_k.shape[1], q.shape[1], q.device)
        kr = rope(k, pos, self.freqs).to(self.dtype)
        keys = torch.cat((self.answer_k, kr), 1)
        values = torch.cat((self.answer_v, v.to(self.dtype)), 1)
        out = attend(rope(q, pos, self.freqs), keys, values)
        self.answer_k, self.answer_v = keys, values
        return out

    def end_answer(self) -> None:
        self.answer_k = self.answer_v = None

    # -------------------------------------------------------------- footprint
    def quantized_bytes(self) -> int:
        return self.store.nbytes(QUANT_FIELDS)

    def key_bytes(self) -> int:
        return self.store.nbytes(("keys",))

    def device_bytes(self) -> int:
        held = [self.init_k, self.init_v]
        if self.answer_k is not None and self.answer_v is not None:
            held += [self.answer_k, self.answer_v]
        return sum(t.numel() * t.element_size() for t in held) + self.quantized_bytes() + self.key_bytes()
