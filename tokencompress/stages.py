"""The four places in a VideoLLM where a strategy may act."""

from __future__ import annotations

from enum import Enum

__all__ = ["Stage"]


class Stage(str, Enum):
    """Pipeline stages, in the order a frame flows through them."""

    PRE_VIT_BLOCK = "pre_vit_block"
    """Inside every vision-encoder layer; the strategy may compute the layer for a token subset."""
    POST_VIT = "post_vit"
    """Encoder output (selected feature layer), before the projector and any pooling."""
    PRE_PREFILL = "pre_prefill"
    """Projected (and pooled) visual tokens in LLM width, before they are placed in the prompt."""
    KV_CACHE = "kv_cache"
    """The decoder's attention cache: what the LLM keeps and attends to while a stream encodes and
    when a question is asked (contract in :mod:`tokencompress.hooks.kv_cache`)."""

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.value


from dataclasses import dataclass  # noqa: E402


@dataclass(frozen=True)
class StageInfo:
    """What a target promises about the tokens a strategy sees at one stage, for build-time checks."""

    stage: Stage
    tokens_per_frame: int
    """Tokens one frame carries into this stage (e.g. 729 at post_vit, 196 at pre_prefill on LLaVA-OV)."""
    dim: int
    """Feature width at this stage."""
    grid: tuple[int, int]
    """(rows, cols) of one frame's token grid."""
    count_locked: bool = False
    """True where the model's own code after this stage needs every token (stock pooling, mergers)."""


__all__ += ["StageInfo"]
