"""What a stream reports: one :class:`ChunkStats` per chunk and one :class:`Answer` per question."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

__all__ = ["Answer", "ChunkStats"]


@dataclass(frozen=True)
class ChunkStats:
    """What one chunk cost and kept; token counts are per stage (in, out).

    With ``stream.prefill_chunks > 1`` a chunk whose tokens wait for their group reports
    ``prefill_ms = 0`` and ``prefilled_chunks = 0``; the chunk that runs the group prefill reports
    the whole group's prefill time and how many chunks it carried (when ``flush()``/``ask()``
    closes a short group, the last chunk's entry in ``Stream.history`` is updated so).
    """

    chunk: int
    first_frame: int
    frames: int
    vit_tokens: int
    post_vit: tuple[int, int]
    pre_prefill: tuple[int, int]
    preprocess_ms: float
    vit_ms: float
    compress_ms: float
    prefill_ms: float
    """Decoder time of the prefill this chunk ran (its own tokens, or its whole group's)."""
    total_ms: float
    cache_tokens: int
    """Tokens resident in the decoder's attention cache after the chunk (per layer); tokens still
    waiting for a group prefill are not resident yet."""
    stored_tokens: int = 0
    """Tokens per layer a kv_cache strategy keeps outside the attention cache (ReKV's block store)."""
    stored_bytes: int = 0
    """Host bytes of that store, all layers."""
    kv_ms: float = 0.0
    """Time the kv_cache strategy spent between prefills for this chunk (before and after it: e.g.
    InfiniPot-V's compression, a window's eviction); work inside the attention calls (ReKV's
    eviction to blocks) counts as prefill."""
    prefilled_chunks: int = 1
    """Chunks whose tokens this chunk's prefill carried: 1 unless ``stream.prefill_chunks > 1``, then
    0 while its tokens wait, or the size of the group whose prefill it ran."""

    @property
    def llm_tokens(self) -> int:
        return self.pre_prefill[1]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Answer:
    text: str
    token_ids: list[int]
    first_token_ms: float
    total_ms: float
    first_logits: Tensor = field(repr=False)
    retrieval_ms: float = 0.0
    """Time of the kv_cache strategy's retrieval pass (ReKV), included in ``first_token_ms``."""
    retrieved: list[list[int]] | None = None
    """Frames each decoder layer retrieved for this question (ReKV), else None."""
