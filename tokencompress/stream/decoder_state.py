"""A stream's decoder side: its LLM state, the kv_cache strategy's memory (if any) and the position guard.

A :class:`~tokencompress.stream.stream.Stream` owns one of these; every prefill goes through it so a
kv_cache strategy (ReKV's sliding window and block store, StreamingLLM's window) sees each
text run and chunk, and a stream without one is warned near the model's position limit and
refused past it, naming the strategies that would let it go on.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..api.decode_policy import DecodeStep
from ..api.errors import ConfigError
from ..api.tokens import VisualTokens
from ..api.types import ChunkInfo, Stage
from .positions import PositionGuard
from .transaction import crop_cache

if TYPE_CHECKING:
    from ..api.target import Target
    from .seam import ChunkEncoder

__all__ = ["DecoderState"]


class DecoderState:
    """``llm`` is the stream's :class:`~tokencompress.api.target.LLMState`; ``kv`` the strategy's memory."""

    def __init__(self, bound: ChunkEncoder, target: Target) -> None:
        self.bound = bound
        self.target = target
        kv, build = bound.kv, bound.kv_build
        self.kv = kv.new_memory(target, build) if kv is not None and build is not None else None
        self.llm = self.kv.new_llm_state(target) if self.kv is not None else target.new_llm_state()
        dropper, stack = bound.in_decoder, target.decoder_stack()
        if dropper is not None and stack is not None:
            self.llm.in_decoder = dropper.new_decoder_state(stack.num_layers)
        policy, pbuild = bound.decode_policy, bound.policy_build
        self.policy = policy.new_policy(target, pbuild) if policy is not None and pbuild is not None else None
        """The kv_cache decode policy's state (``dycoke_kv``), None without one."""
        self.visual = torch.zeros(0, dtype=torch.bool)
        """With a policy: ``[cache length]`` bool, which cache entries hold video tokens."""
        self._rows: Tensor | None = None  # the next prefill's visual-row mask
        layout = target.decoder_layout()
        self.guard = PositionGuard(
            layout.max_positions if layout is not None else 0,
            bound.position_fixes,
            bounded=self.kv is not None and self.kv.bounds_positions,
        )

    # ------------------------------------------------------------ transactions
    def snapshot(self) -> tuple[dict[str, Any], list[int], bool, Any, Any, Tensor]:
        """The LLM state's small fields (deep-copied; the cache is cropped back instead and the
        tokenizer never changes), every cache layer's length (an in_decoder strategy leaves the
        layers past its boundary shorter), the guard's warning flag and the kv_cache memory's own
        snapshot; with a memory that ``replaces_cache``, every layer's tensors too (references:
        prefills and compressions replace them, never write into them)."""
        fields = {k: copy.deepcopy(v) for k, v in vars(self.llm).items() if k not in ("cache", "tokenizer")}
        memory = self.kv.snapshot() if self.kv is not None else None
        tensors = None
        if self.kv is not None and self.kv.replaces_cache:
            tensors = [(getattr(x, "keys", None), getattr(x, "values", None)) for x in self.llm.cache.layers]
        lengths = [int(x.get_seq_length()) for x in self.llm.cache.layers]
        return fields, lengths, self.guard.warned, memory, tensors, self.visual

    def restore(self, snapshot: tuple[dict[str, Any], list[int], bool, Any, Any, Tensor]) -> None:
        fields, lengths, warned, memory, tensors, self.visual = snapshot
        self._rows = None
        crop_cache(self.llm.cache, lengths)
        for layer, (keys, values) in zip(self.llm.cache.layers, tensors or (), strict=False):
            if isinstance(keys, Tensor) and isinstance(values, Tensor):
                layer.keys, layer.values = keys, values
        for k, v in fields.items():
            setattr(self.llm, k, v)
        self.guard.warned = warned
        if self.kv is not None:
            self.kv.restore(memory)

    def require_patches(self) -> None:
        """Refuse decoder work while the pipeline's decoder patches are out: a memory's attention,
        an in_decoder drop or a decode policy would silently not happen (or fail deep inside)."""
        if not self.bound.decoder_patched:
            raise RuntimeError(
                "the pipeline's decoder hooks are not installed: open streams inside "
                "`with pipeline.apply(model) as bound:` (bind() alone only checks the pipeline)"
            )

    def before_prefill(self, kind: str, tokens: int, visual: VisualTokens | None = None) -> None:
        """Before every encode-time prefill; ``visual``: the chunk's tokens (kind ``"frames"``)."""
        self.require_patches()
        if visual is not None:
            self.announce(visual)
        wants = self.kv is not None and self.kv.wants_visual_rows
        rows = None
        if visual is not None and (wants or self.policy is not None):
            rows = self.target.visual_row_mask(self.llm, visual).to("cpu", torch.bool)
        if self.policy is not None:
            self._rows = rows if rows is not None else torch.zeros(tokens, dtype=torch.bool)
        if self.kv is not None:
            if rows is not None and wants:
                self.kv.visual_rows(self.llm, rows)
            self.kv.before_prefill(self.llm, kind, tokens)

    def announce(self, visual: VisualTokens) -> None:
        """Tell the in_decoder stage which rows of the next prefill are this chunk's visual tokens."""
        state = self.llm.in_decoder
        if state is not None:
            state.pending.append(self.target.visual_row_mask(self.llm, visual))

    def scope(self) -> AbstractContextManager[None]:
        """The stream's decoder calls run inside this (the in_decoder hooks see its bookkeeping)."""
        if self.llm.in_decoder is None:
            return nullcontext()
        return self.bound.in_decoder_scope(lambda: self.llm.in_decoder)  # a restore replaces the object

    def after_encode(self) -> None:
        appended = self.visual
        if self.policy is not None and self._rows is not None:
            appended, self._rows = torch.cat((self.visual, self._rows)), None
        if self.kv is not None:
            self.kv.after_encode(self.llm)
        if self.policy is not None:
            self.visual = self.kv.visual_slots(self.llm, appended) if self.kv is not None else appended

    @contextmanager
    def answering(self) -> Iterator[None]:
        """An answer's decode steps go through the decode policy (if any): on a stock cache through the
        pipeline's attention routing, in a memory with its own attention through its ``decode_step``."""
        self.require_patches()
        if self.policy is None:
            yield
            return
        step = DecodeStep(self.policy)
        visual = torch.zeros(self.llm.length, dtype=torch.bool)
        n = min(self.llm.length, self.visual.numel())
        visual[:n] = self.visual[:n]
        self.policy.begin_question()
        custom = self.kv is not None and self.kv.custom_attention
        try:
            if custom:
                self.kv.decode_step = step  # type: ignore[union-attr]
                yield
            else:
                with self.bound.decode_answering(step, visual):
                    yield
        finally:
            if custom:
                vars(self.kv).pop("decode_step", None)  # the class's None shows through again
            self.policy.end_question()

    def policy_stats(self) -> dict[str, Any]:
        """What the decode policy did so far (empty without one)."""
        return self.policy.stats() if self.policy is not None else {}

    def check_chunk(self, tokens: VisualTokens, chunk: ChunkInfo) -> None:
        """Refuse a chunk that would break the memory's frame grid."""
        build = self.bound.kv_build
        if self.kv is not None and build is not None and self.kv.custom_attention:
            per = build.tokens_per_frame
            counts = tokens.counts()
            if per is not None and counts.numel() and not bool((counts == per).all()):
                raise ConfigError(
                    f"chunk {chunk.index}: frames kept {counts.tolist()} tokens, but the kv_cache strategy stores "
                    f"one block of {per} tokens per frame; use a pruner with a fixed per-frame budget"
                )

    def guard_chunk(self, chunk: ChunkInfo, length: int, position: int, visual: int) -> None:
        """After a chunk's prefill: past the position limit, take the chunk back out and refuse it.

        Checked after the fact because only the target knows where its positions end (M-RoPE
        advances by the grid, not the token count); the wasted prefill happens once, at the limit.
        """
        try:
            self.guard.check(self.llm.next_position, f"chunk {chunk.index}")
        except Exception:
            self.target.rewind(self.llm, length, position)
            self.llm.visual_tokens = visual
            raise

    def observe(self, chunk: ChunkInfo, n_in: int, seconds: float, stream_id: int) -> None:
        """Tell observers what the decoder memory holds after a chunk (stage kv_cache)."""
        if self.kv is not None:
            self.bound.observe(Stage.KV_CACHE, chunk, n_in, self.cache_tokens(), seconds, stream_id)

    def cache_tokens(self) -> int:
        """Tokens resident in the decoder's attention cache (per layer)."""
        return self.kv.resident_tokens(self.llm) if self.kv is not None else self.llm.length

    def stored(self) -> tuple[int, int]:
        """(tokens per layer, host bytes) the strategy keeps outside the attention cache."""
        return (self.kv.stored_tokens(), self.kv.stored_bytes()) if self.kv is not None else (0, 0)

    def bytes_by_device(self) -> dict[str, int]:
        """Bytes this memory holds, by device (``"cpu"``, ``"cuda:0"``, ...)."""
        device = str(self.target.device)
        if self.kv is None:
            held = sum(
                t.numel() * t.element_size()
                for layer in self.llm.cache.layers
                for t in (getattr(layer, "keys", None), getattr(layer, "values", None))
                if isinstance(t, Tensor)
            )
            return {device: held}
        out = {device: self.kv.device_bytes(self.llm)}
        stored = 0 if self.kv.stores_on_device else self.kv.stored_bytes(allocated=True)
        if stored:
            out["cpu"] = out.get("cpu", 0) + stored
        return out
