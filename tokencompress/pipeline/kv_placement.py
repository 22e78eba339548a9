"""The pipeline's kv_cache strategy, checked against a target at build time.

The token stages decide how many tokens a frame leaves pre_prefill with; a kv_cache strategy that
stores frames as blocks (ReKV) needs that count fixed, and a target must expose its decoder in
the form the strategy needs. Everything that would break at run time is refused here, naming
the strategy, the target and the reason.
"""

from __future__ import annotations

from typing import Any

from ..api.errors import CompatibilityError
from ..api.kv_cache_strategy import KVBuild, KVCacheStrategy
from ..api.target import Target
from ..api.types import Stage
from .config import PipelineConfig

__all__ = ["kv_build"]


def kv_build(
    config: PipelineConfig, target: Target, planned: Any
) -> tuple[KVCacheStrategy | None, KVBuild | None]:
    """The pipeline's kv_cache strategy checked against ``target`` (both None without one).

    ``planned`` is (tokens per token frame after pre_prefill or None, the strategy that makes it
    data-dependent).
    """
    steps = config.strategies(Stage.KV_CACHE)
    if not steps:
        return None, None
    if len(steps) > 1:
        raise CompatibilityError(
            f"stages.kv_cache: at most one strategy decides the decoder's memory, got {', '.join(s.name for s in steps)}"
        )
    strategy = steps[0]
    where = "stages.kv_cache[0]"
    assert isinstance(strategy, KVCacheStrategy)
    if strategy.name not in target.kv_cache_strategies:
        supported = ", ".join(sorted(target.kv_cache_strategies)) or "none"
        reason = target.kv_cache_refusals.get(strategy.name)
        raise CompatibilityError(
            f"{where}: kv_cache strategy '{strategy.name}' is not supported by target '{target.name}' "
            f"(it supports: {supported})" + (f"; {reason}" if reason else "")
        )
    layout = target.decoder_layout()
    if layout is None:
        raise CompatibilityError(
            f"{where}: target '{target.name}' does not expose its decoder (decoder_layout)"
        )
    missing = strategy.needs - target.provides.get(Stage.KV_CACHE, frozenset())
    if missing:
        raise CompatibilityError(
            f"{where}: strategy '{strategy.name}' needs {', '.join(sorted(m.value for m in missing))} at "
            f"kv_cache, which target '{target.name}' cannot provide"
        )
    per, by = planned
    build = KVBuild(
        target=target.name,
        layout=layout,
        tokens_per_frame=per,
        variable_count_by=by,
        frames_per_chunk=target.token_frames(config.stream.frames_per_chunk),
        extra_tokens_per_chunk=target.kv_extra_tokens_per_chunk(),
    )
    strategy.check_build(build)
    return strategy, build
