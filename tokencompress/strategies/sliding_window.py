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

Each eviction rotates the window's keys again; in float32 that costs ~1e-7 per rotation, in
bfloat16 about one ulp, which accumulates over the chunks a token spends in the window.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from ..api.errors import BudgetError
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


class SlidingWindowMemory(KVMemory):
    """Trims one stream's ``DynamicCache`` to sinks + window after every encode-time prefill."""

    logs_positions = True

    def __init__(self, n_local: int, sinks: int | None, freqs: Tensor) -> None:
        super().__init__()
        self.n_local, self.sinks, self.freqs = n_local, sinks, freqs
        self.positions: Tensor | None = None  # [R, T] position ids of the cached tokens

    def before_prefill(self, llm: LLMState, kind: str, tokens: int) -> None:
        if kind == "frames" and self.sinks is None:
            self.sinks = llm.length  # the system prompt (everything before the first frame)

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
        if total <= s + self.n_local:
            return
        pos = self.positions
        keep = pos[:, total - self.n_local :]
        sink_next = int(pos[:, :s].max()) + 1 if s else 0
        delta = int(keep.min()) - sink_next
        for layer in llm.cache.layers:
            k, v = layer.keys, layer.values
            window = k[:, :, total - self.n_local :]
            if delta > 0:
                window = rotate_by(window, -delta, self.freqs)
            layer.keys = torch.cat((k[:, :, :s], window), dim=2).contiguous()
            layer.values = torch.cat((v[:, :, :s], v[:, :, total - self.n_local :]), dim=2).contiguous()
        self.positions = torch.cat((pos[:, :s], keep - max(delta, 0)), dim=1)
        llm.next_position -= max(delta, 0)

    def end_question(self, llm: LLMState) -> None:
        if llm.position_log is not None:
            llm.position_log.clear()  # the question's positions went with its cache entries


class SlidingWindow(KVCacheStrategy):
    """Sinks + the last ``n_local`` tokens; positions renumbered so they never run out."""

    name = "sliding_window"
    Params = SlidingWindowParams
    summary = (
        "StreamingLLM-style sliding window: attention sinks + the last n_local tokens, positions bounded"
    )
    paper = "Xiao et al., Efficient Streaming Language Models with Attention Sinks, ICLR 2024"

    def check_build(self, build: KVBuild) -> None:
        p: SlidingWindowParams = self.params  # type: ignore[assignment]
        per = build.tokens_per_frame
        if per is not None and p.n_local < per + build.extra_tokens_per_chunk:
            need = per + build.extra_tokens_per_chunk
            raise BudgetError(
                f"sliding_window.n_local = {p.n_local} is smaller than one frame's {need} tokens on target "
                f"'{build.target}'; use n_local >= {need}"
            )

    def new_memory(self, target: Target, build: KVBuild) -> SlidingWindowMemory:
        p: SlidingWindowParams = self.params  # type: ignore[assignment]
        return SlidingWindowMemory(p.n_local, p.sink_tokens, target.rope_inv_freq().to(target.device))

    @classmethod
    def conformance_params(cls, info) -> dict:  # type: ignore[no-untyped-def]
        return {"n_local": 64 * info.tokens_per_frame}
