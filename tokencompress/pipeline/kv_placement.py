"""The pipeline's kv_cache strategy, checked against a target at build time.

The token stages decide how many tokens a frame leaves pre_prefill with; a kv_cache strategy that
stores frames as blocks (ReKV) needs that count fixed, and a target must expose its decoder in
the form the strategy needs. Everything that would break at run time is refused here, naming
the strategy, the target and the reason.
"""

from __future__ import annotations

from typing import Any

from ..api.decode_policy import DecodePolicy
from ..api.errors import CompatibilityError
from ..api.kv_cache_strategy import KVBuild, KVCacheStrategy
from ..api.target import Target
from ..api.types import Stage
from ..plugins.registry import Registry
from .config import PipelineConfig

__all__ = ["kv_build", "policy_build", "position_fixes"]


def kv_build(
    config: PipelineConfig, target: Target, planned: Any
) -> tuple[KVCacheStrategy | None, KVBuild | None]:
    """The pipeline's kv_cache strategy checked against ``target`` (both None without one).

    ``planned`` is (tokens per token frame after pre_prefill or None, the strategy that makes it
    data-dependent).
    """
    steps = config.strategies(Stage.KV_CACHE)
    memories = [(i, s) for i, s in enumerate(steps) if not isinstance(s, DecodePolicy)]
    policies = [(i, s) for i, s in enumerate(steps) if isinstance(s, DecodePolicy)]
    if len(memories) > 1:
        raise CompatibilityError(
            f"stages.kv_cache: at most one strategy decides the decoder's memory, got "
            f"{', '.join(s.name for _, s in memories)}; keep one of them (a decode policy such as dycoke_kv "
            f"may come along)"
        )
    if len(policies) > 1:
        raise CompatibilityError(
            f"stages.kv_cache: at most one decode policy chooses what answer steps attend to, got "
            f"{', '.join(s.name for _, s in policies)}; keep one of them"
        )
    if not memories:
        return None, None
    index, strategy = memories[0]
    where = f"stages.kv_cache[{index}]"
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
    build = _build(config, target, layout, planned)
    strategy.check_build(build)
    return strategy, build


def _build(config: PipelineConfig, target: Target, layout: Any, planned: Any) -> KVBuild:
    per, by = planned
    return KVBuild(
        target=target.name,
        layout=layout,
        tokens_per_frame=per,
        variable_count_by=by,
        frames_per_chunk=target.token_frames(config.stream.frames_per_chunk),
        extra_tokens_per_chunk=target.kv_extra_tokens_per_chunk(),
    )


def policy_build(
    config: PipelineConfig, target: Target, planned: Any, memory: KVCacheStrategy | None
) -> tuple[DecodePolicy | None, KVBuild | None]:
    """The pipeline's decode policy checked against ``target`` and the memory it answers on (both None
    without one); call after :func:`kv_build`, which refuses two memories or two policies."""
    steps = config.strategies(Stage.KV_CACHE)
    found = [(i, s) for i, s in enumerate(steps) if isinstance(s, DecodePolicy)]
    if not found:
        return None, None
    index, policy = found[0]
    where = f"stages.kv_cache[{index}]"
    layout = target.decoder_layout()
    if layout is None:
        raise CompatibilityError(
            f"{where}: decode policy '{policy.name}' needs the decoder's attention, which target "
            f"'{target.name}' does not expose (decoder_layout)"
        )
    if memory is not None and not memory.hosts_decode_policy:
        raise CompatibilityError(
            f"{where}: decode policy '{policy.name}' cannot run on the answers of kv_cache memory "
            f"'{memory.name}' (target '{target.name}'): that memory does not say which of its entries are "
            f"visual; drop one of them"
        )
    build = _build(config, target, layout, planned)
    policy.check_build(build)
    return policy, build


def _yaml(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def position_fixes(registry: Registry, target: Target) -> tuple[str, ...]:
    """The kv_cache steps this target runs whose memory bounds positions, as YAML flow mappings
    (``{strategy: infinipot_v, positions: compact}``), by name: what a stream refused at the model's
    ``max_position_embeddings`` suggests. A strategy counts only if it declares the parameters that
    make it bound positions (``KVCacheStrategy.position_bounding``) on this decoder."""
    layout = target.decoder_layout()
    if layout is None:
        return ()
    fixes = []
    for name in sorted(target.kv_cache_strategies):
        reg = registry.strategies.get(name)
        if reg is None or not issubclass(reg.cls, KVCacheStrategy):
            continue  # not installed (or clashing): nothing to suggest
        params = reg.cls.position_bounding(layout)
        if params is not None:
            fixes.append(
                "{" + ", ".join([f"strategy: {name}", *(f"{k}: {_yaml(v)}" for k, v in params.items())]) + "}"
            )
    return tuple(fixes)
