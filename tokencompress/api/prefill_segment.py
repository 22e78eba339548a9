"""Prefilling the kept tokens of several chunks in one decoder call (``stream.prefill_chunks``).

A pruned chunk hands the decoder few rows (60 of 196 per frame), and a prefill of few rows runs
its matrix multiplies far below their per-FLOP speed. Grouping the prefill of consecutive
chunks wins that back, but the chunks must land in the cache exactly as separate prefills
would put them. So the carrier is not :class:`~tokencompress.api.tokens.VisualTokens` (one chunk's
grid, frames and M-RoPE layout: two chunks are not one chunk of twice the frames, since each
chunk has its own vision delimiters and its own position advance) but the decoder input each
chunk would have been prefilled with: a :class:`PrefillSegment`. A target builds one per chunk
when the chunk completes (:meth:`~tokencompress.api.target.Target.visual_segment`, which assigns
the chunk's positions then, so the position guard sees waiting tokens at once), and prefills
any run of them in one call (:meth:`~tokencompress.api.target.Target.prefill_segments`). A causal
decoder with explicit positions computes the same keys and values for ``[A; B]`` in one call
as for ``A`` then ``B`` on the cache, up to floating-point summation order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import CompatibilityError
from .types import Stage, StreamConfig

__all__ = ["PrefillSegment", "check_prefill_grouping"]


@dataclass(frozen=True)
class PrefillSegment:
    """One chunk's decoder input, positions already assigned; any run of them concatenates.

    - ``embeds`` ``[L, D]``: the rows the chunk prefills (visual tokens and the target's
      delimiters or timestamp text around them).
    - ``positions`` ``[..., L]``: as the decoder takes them (``[1, L]`` for 1-D RoPE,
      ``[3, 1, L]`` for M-RoPE); concatenated along the last axis.
    - ``visual``: kept visual tokens among the ``L`` rows.
    - ``visual_mask`` ``[L]`` bool: which rows are visual tokens, where the decoder adds
      per-token features at them (Qwen3-VL DeepStack); None elsewhere.
    - ``extras``: ``[visual, D]`` per decoder-side feature stream (DeepStack layers), rows in
      the order of the visual rows.
    """

    embeds: Tensor
    positions: Tensor
    visual: int
    visual_mask: Tensor | None = None
    extras: tuple[Tensor, ...] = ()

    @property
    def length(self) -> int:
        return self.embeds.shape[0]

    @staticmethod
    def concat(segments: Sequence[PrefillSegment]) -> PrefillSegment:
        """The segments in order, as one decoder input (the first one itself when alone)."""
        if not segments:
            raise ValueError("no segments to prefill")
        if len(segments) == 1:
            return segments[0]
        masks = [s.visual_mask for s in segments]
        if any(m is None for m in masks) and not all(m is None for m in masks):
            raise ValueError("segments disagree on visual masks: some chunks carry one, some do not")
        widths = {len(s.extras) for s in segments}
        if len(widths) != 1:
            raise ValueError(f"segments carry different numbers of extra feature streams {sorted(widths)}")
        return PrefillSegment(
            embeds=torch.cat([s.embeds for s in segments]),
            positions=torch.cat([s.positions for s in segments], dim=-1),
            visual=sum(s.visual for s in segments),
            visual_mask=None if masks[0] is None else torch.cat(masks),  # type: ignore[arg-type]
            extras=tuple(torch.cat(parts) for parts in zip(*(s.extras for s in segments), strict=True)),
        )


def check_prefill_grouping(stream: StreamConfig, target: object, kv_steps: Sequence[object]) -> None:
    """Refuse ``prefill_chunks > 1`` where it cannot be exact, naming the field and the fix.

    A kv_cache strategy acts on every chunk's prefill (ReKV's sliding window and block store,
    StreamingLLM's eviction count chunk by chunk), and a target that prefills chunks its own way
    (overrides ``prefill_visual`` but offers no ``visual_segment``) has no exact group prefill.
    """
    k = stream.prefill_chunks
    if k == 1:
        return
    if kv_steps:
        names = ", ".join(getattr(s, "name", "?") for s in kv_steps)
        raise CompatibilityError(
            f"stream.prefill_chunks = {k}: the kv_cache strategy {names} acts on every chunk's prefill, so "
            f"chunks cannot be prefilled together; set stream.prefill_chunks: 1 or drop stages.{Stage.KV_CACHE.value}"
        )
    cls = type(target)

    def owner(name: str) -> type:
        return next(c for c in cls.__mro__ if name in vars(c))

    own, segment = owner("prefill_visual"), owner("visual_segment")
    if own is not segment and issubclass(own, segment):  # prefill_visual redefined below visual_segment
        raise CompatibilityError(
            f"stream.prefill_chunks = {k}: target '{getattr(target, 'name', cls.__name__)}' prefills chunks its "
            "own way (prefill_visual) and offers no visual_segment to group them; set stream.prefill_chunks: 1"
        )
