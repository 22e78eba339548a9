"""Sliding window with attention sinks (StreamingLLM style): the bounded memory for every target.

After every encode-time prefill the decoder cache keeps its first ``sink_tokens`` tokens (the
system prompt by default) and its last ``n_local`` tokens; what falls between is dropped. The
kept window is then moved down so it follows the sinks directly: its post-RoPE keys are rotated
by ``-delta`` and every later position is ``delta`` lower, so positions stay below
``sink_tokens + n_local + chunk`` however long the stream runs. ``delta`` is the gap between the
sinks' next position and the window's smallest position component; under Qwen's 3-D M-RoPE all
three components move by the same ``delta``, which is one rotation of every channel by ``delta``
(:func:`tokencompress.strategies.rekv.rotate_by`), so the window's own geometry is unchanged. Questions
run on the stock cache and are cropped away afterwards as without a strategy.

``window_chunks`` sizes the window in chunks instead of tokens: after each chunk the cache keeps the
sinks and the tokens of the last ``window_chunks`` chunks (each with its delimiters, and any text
prefilled after the oldest of them), whatever their counts. With ``frames_per_chunk: 1`` and the
default sinks this is SimpleStream's "only the last N frames are visible" (``pipelines/simplestream.yaml``).
The kept tokens' keys and values are those computed when they were prefilled, while older frames were
still in the window (as in every sliding window), not a fresh encoding of the last N frames alone.

With an in_decoder strategy in front (FastV, PyramidDrop with ``positions: keep``) the layers past
its boundary hold a subset of layer 0's entries; each layer keeps the sinks and window entries it
holds (``LLMState.in_decoder`` maps them), and one position shift serves every layer because no
position was renumbered.

Each eviction rotates the window's keys again; in float32 that costs ~1e-7 per rotation, in
bfloat16 about one ulp, which accumulates over the chunks a token spends in the window.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, model_validator
from torch import Tensor

from ..api.errors import BudgetError
from ..api.kv_cache import DecoderLayout
from ..api.kv_cache_strategy import KVBuild, KVCacheStrategy, KVMemory
from ..api.strategy import StrategyParams
from ..api.target import LLMState, Target
from .rekv import rotate_by

__all__ = ["SlidingWindow", "SlidingWindowParams", "SlidingWindowMemory"]


class SlidingWindowParams(StrategyParams):
    n_local: int = Field(15000, ge=1, description="Most recent tokens kept in the cache after each chunk")
    sink_tokens: int | None = Field(
        None, ge=0, description="First tokens always kept (attention sinks); default: the system prompt"
    )
    window_chunks: int | None = Field(
        None,
        ge=1,
        description="Keep the tokens of the last window_chunks chunks (with their delimiters) instead of "
        "n_local tokens; with frames_per_chunk 1 that is the last window_chunks frames (SimpleStream)",
    )

    @model_validator(mode="after")
    def _one_window(self) -> SlidingWindowParams:
        if self.window_chunks is not None and "n_local" in self.model_fields_set:
            raise ValueError("give n_local (tokens) or window_chunks (chunks), not both")
        return self


class SlidingWindowMemory(KVMemory):
    """Trims one stream's ``DynamicCache`` to sinks + window after every encode-time prefill."""

    logs_positions = True

    def __init__(
        self, n_local: int, sinks: int | None, freqs: Tensor, window_chunks: int | None = None
    ) -> None:
        super().__init__()
        self.n_local, self.sinks, self.freqs = n_local, sinks, freqs
        self.window_chunks = window_chunks
        self.positions: Tensor | None = None  # [R, T] position ids of the cached tokens
        self.chunk_starts: list[int] = []  # cache index where each chunk still in the window begins

    def before_prefill(self, llm: LLMState, kind: str, tokens: int) -> None:
        if kind == "frames" and self.sinks is None:
            self.sinks = llm.length  # the system prompt (everything before the first frame)
        if kind == "frames":
            self.chunk_starts.append(llm.length)

    def _window(self, total: int) -> int:
        """Tokens the window keeps now: ``n_local``, or everything from the oldest chunk kept."""
        if self.window_chunks is None:
            return self.n_local
        if len(self.chunk_starts) <= self.window_chunks:
            return total
        return total - self.chunk_starts[-self.window_chunks]

    def _absorb(self, llm: LLMState) -> None:
        log = llm.position_log
        if log:
            new = torch.cat(log, dim=1)
            self.positions = new if self.positions is None else torch.cat((self.positions, new), dim=1)
            log.clear()

    def after_encode(self, llm: LLMState) -> None:
        self._absorb(llm)
        total = llm.length
        assert self.positions is not None and self.positions.shape[1] == total, "position log out of step"
        if self.sinks is None:
            return  # no frame yet: everything so far will be the sinks
        s = min(self.sinks, total)
        n_local = self._window(total)
        if total <= s + n_local:
            return
        cut = total - n_local
        self.chunk_starts = [s + c - cut for c in self.chunk_starts if c >= cut]
        pos = self.positions
        keep = pos[:, total - n_local :]
        sink_next = int(pos[:, :s].max()) + 1 if s else 0
        delta = int(keep.min()) - sink_next
        dropper = llm.in_decoder  # an in_decoder strategy: the layers past its boundary hold fewer entries
        for i, layer in enumerate(llm.cache.layers):
            held = dropper.entries(i) if dropper is not None else None
            s_i, cut_i = (s, cut) if held is None else (int(held[:s].sum()), int(held[:cut].sum()))
            k, v = layer.keys, layer.values
            window = k[:, :, cut_i:]
            if delta > 0:
                window = rotate_by(window, -delta, self.freqs)
            layer.keys = torch.cat((k[:, :, :s_i], window), dim=2).contiguous()
            layer.values = torch.cat((v[:, :, :s_i], v[:, :, cut_i:]), dim=2).contiguous()
        if dropper is not None:
            kept = torch.ones(total, dtype=torch.bool)
            kept[s:cut] = False
            dropper.keep_entries(kept)
        self.positions = torch.cat((pos[:, :s], keep - max(delta, 0)), dim=1)
        llm.next_position -= max(delta, 0)

    def visual_slots(self, llm: LLMState, appended: Tensor) -> Tensor:
        """The window keeps the first ``sinks`` entries and the most recent ones: cut the mask alike."""
        n = llm.length
        if appended.numel() <= n:
            return appended
        s = min(self.sinks or 0, n)
        return torch.cat((appended[:s], appended[appended.numel() - (n - s) :]))

    def end_question(self, llm: LLMState) -> None:
        if llm.position_log is not None:
            llm.position_log.clear()  # the question's positions went with its cache entries


class SlidingWindow(KVCacheStrategy):
    """Sinks + the last ``n_local`` tokens; positions renumbered so they never run out."""

    name = "sliding_window"
    hosts_decode_policy = True
    Params = SlidingWindowParams
    per_layer_lengths = True
    """With an in_decoder strategy (positions kept) each layer keeps the window's entries it holds."""
    summary = (
        "StreamingLLM-style sliding window: attention sinks + the last n_local tokens, positions bounded"
    )
    paper = "Xiao et al., Efficient Streaming Language Models with Attention Sinks, ICLR 2024"

    def check_build(self, build: KVBuild) -> None:
        p: SlidingWindowParams = self.params  # type: ignore[assignment]
        per = build.tokens_per_frame
        if p.window_chunks is None and per is not None and p.n_local < per + build.extra_tokens_per_chunk:
            need = per + build.extra_tokens_per_chunk
            raise BudgetError(
                f"sliding_window.n_local = {p.n_local} is smaller than one frame's {need} tokens on target "
                f"'{build.target}'; use n_local >= {need}"
            )

    @classmethod
    def position_bounding(cls, layout: DecoderLayout) -> dict[str, Any] | None:
        return {}  # every window is renumbered to follow the sinks

    def new_memory(self, target: Target, build: KVBuild) -> SlidingWindowMemory:
        p: SlidingWindowParams = self.params  # type: ignore[assignment]
        freqs = target.rope_inv_freq().to(target.device)
        return SlidingWindowMemory(p.n_local, p.sink_tokens, freqs, p.window_chunks)

    @classmethod
    def conformance_params(cls, info) -> dict:  # type: ignore[no-untyped-def]
        return {"n_local": 64 * info.tokens_per_frame}
