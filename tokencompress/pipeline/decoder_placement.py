"""The pipeline's in_decoder strategy, checked against a target (and the kv_cache memory) at build time.

An in_decoder strategy drops visual tokens between decoder layers, so the layers past its first
boundary hold fewer cache entries than the ones before. Everything that would break at run time is
refused here, naming the field, the target and the reason: a target without reachable decoder
layers, a boundary outside the decoder (or before the layers a target needs whole), renumbered
positions under M-RoPE, a schedule that keeps no token of a chunk, more than one in_decoder
strategy, and a kv_cache memory that needs every layer to hold the same entries.
"""

from __future__ import annotations

from ..api.errors import CompatibilityError
from ..api.in_decoder import DecoderStack, InDecoderStrategy
from ..api.kv_cache_strategy import KVCacheStrategy
from ..api.strategy import Strategy
from ..api.target import Target
from ..api.types import Stage
from .config import PipelineConfig

__all__ = ["in_decoder_build"]


def in_decoder_build(
    config: PipelineConfig,
    target: Target,
    visual_per_chunk: int | None,
    kv: KVCacheStrategy | None,
    policy: Strategy | None = None,
) -> tuple[InDecoderStrategy | None, DecoderStack | None]:
    """The pipeline's in_decoder strategy and the decoder it runs on (both None without one).

    ``visual_per_chunk``: the visual tokens one chunk prefills when known from shapes (None when a
    strategy before makes it data-dependent); ``kv``: the pipeline's kv_cache strategy, if any.
    """
    steps = config.strategies(Stage.IN_DECODER)
    if not steps:
        return None, None
    if len(steps) > 1:
        raise CompatibilityError(
            f"stages.in_decoder: at most one strategy drops tokens inside the decoder, got "
            f"{', '.join(s.name for s in steps)}; keep one"
        )
    strategy = steps[0]
    assert isinstance(strategy, InDecoderStrategy)
    where = "stages.in_decoder[0]"
    stack = target.decoder_stack()
    if stack is None:
        raise CompatibilityError(
            f"{where}: strategy '{strategy.name}' runs between decoder layers, but target '{target.name}' does not "
            "expose its decoder layers (decoder_stack); use a target that does or drop stages.in_decoder"
        )
    if stack.attention.startswith(("flash", "flex", "paged")):
        raise CompatibilityError(
            f"{where}: strategy '{strategy.name}' builds a causal mask for each layer's own cache length, which "
            f"the '{stack.attention}' attention of target '{target.name}' does not take; load the model with "
            "attn_implementation='sdpa' or 'eager'"
        )
    try:
        strategy.check_decoder(stack, target.name, visual_per_chunk)
    except CompatibilityError as exc:
        raise CompatibilityError(f"{where}: {exc}") from None
    if kv is not None:
        _check_memory(strategy, kv, target.name)
    if policy is not None:
        raise CompatibilityError(
            f"stages.kv_cache: decode policy '{policy.name}' picks cache entries by layer-0 index in every layer, "
            f"but in_decoder strategy '{strategy.name}' leaves fewer entries in the layers past its boundary on "
            f"target '{target.name}'; drop one of the two"
        )
    return strategy, stack


def _check_memory(strategy: InDecoderStrategy, kv: KVCacheStrategy, target: str) -> None:
    where = "stages.kv_cache[0]"
    if not kv.per_layer_lengths:
        raise CompatibilityError(
            f"{where}: kv_cache strategy '{kv.name}' needs every decoder layer to hold the same cache entries "
            f"(it stores and retrieves them by index across layers), but in_decoder strategy '{strategy.name}' "
            f"leaves fewer in the layers past its boundary on target '{target}'; drop one of the two stages"
        )
    if strategy.mode != "drop" or strategy.positions != "keep":
        what = "mode: mask" if strategy.mode != "drop" else "positions: renumber"
        raise CompatibilityError(
            f"{where}: kv_cache strategy '{kv.name}' moves the window with one position shift for every layer, "
            f"which {strategy.name}'s {what} does not keep valid on target '{target}'; use mode: drop with "
            "positions: keep, or drop the kv_cache stage"
        )
