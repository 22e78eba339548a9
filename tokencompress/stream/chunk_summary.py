"""One summary of a streamed video's per-chunk figures, shared by ``tokencompress run`` and the bench."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["summarize", "stock_llm_tokens"]


def stock_llm_tokens(chunks: Sequence[Any], target: Any) -> int:
    """Visual tokens the stock model would prefill for ``chunks``: the reference for "kept", since a
    post_vit selection may replace the pooling (LLaVA-NeXT-Video) and so shrink pre_prefill's input."""
    from ..api.types import Stage  # here, so the command line starts without importing torch

    per_frame = target.stage_info()[Stage.PRE_PREFILL].tokens_per_frame
    return sum(per_frame * target.token_frames(c.frames) for c in chunks)


def summarize(
    chunks: Sequence[Any], kv_cache_tokens: int, llm_tokens_before: int | None = None
) -> dict[str, Any]:
    """Token totals per stage and mean per-chunk times of ``chunks`` (``ChunkStats``); the "before"
    LLM count is ``llm_tokens_before`` when given (see :func:`stock_llm_tokens`), else pre_prefill's input."""
    frames = sum(c.frames for c in chunks)
    pooled = sum(c.pre_prefill[0] for c in chunks) if llm_tokens_before is None else llm_tokens_before
    kept = sum(c.pre_prefill[1] for c in chunks)
    n = max(1, len(chunks))
    return {
        "chunks": len(chunks),
        "frames": frames,
        "vit_tokens": sum(c.vit_tokens for c in chunks),
        "post_vit_tokens_before": sum(c.post_vit[0] for c in chunks),
        "post_vit_tokens_after": sum(c.post_vit[1] for c in chunks),
        "llm_tokens_before": pooled,
        "llm_tokens_after": kept,
        "llm_token_ratio": kept / pooled if pooled else 1.0,
        "mean_vit_ms": sum(c.vit_ms for c in chunks) / n,
        "mean_prefill_ms": sum(c.prefill_ms for c in chunks) / n,
        "mean_total_ms": sum(c.total_ms for c in chunks) / n,
        "kv_cache_tokens": kv_cache_tokens,
    }
