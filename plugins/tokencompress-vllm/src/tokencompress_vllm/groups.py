"""Qwen3-VL's per-slice video groups in a vLLM prompt, as token ids (no vLLM imported here).

vLLM writes a Qwen3-VL video as one group per temporal slice, ``<t seconds><|vision_start|>
<|video_pad|> x n <|vision_end|>``; a pruned video keeps every group and its timestamp but holds
all its placeholders in the first group (:func:`lumped`), since the kept tokens' spread over the
slices is known only after the encoder ran.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["TEXT", "lumped", "outer_starts_as_text", "relayout", "surplus_columns"]

TEXT = -1
"""Id given to an outer ``<|vision_start|>`` in the copy of the prompt that positions are computed
from: any id that is not a vision marker or a media token reads as text there."""


def lumped(count: int, slices: int) -> list[int]:
    """Placeholders per slice group of a pruned video: all ``count`` in the first (vLLM's form)."""
    return [count] + [0] * (slices - 1)


def outer_starts_as_text(ids: Sequence[int], start: int, inner_next: set[int]) -> list[int]:
    """``ids`` with every ``start`` marker that is not followed by one of ``inner_next`` (a media
    token or the end marker: a group of its own) turned into :data:`TEXT`."""
    out = list(ids)
    for i in range(len(out) - 1):
        if out[i] == start and out[i + 1] not in inner_next:
            out[i] = TEXT
    return out


def relayout(ids: list[int], video_id: int, counts: Sequence[int], slices: Sequence[int]) -> list[int]:
    """``ids`` with each video's groups (runs of ``video_id``, ``slices[v]`` per video in prompt
    order, each unpruned) refilled as :func:`lumped` ``(counts[v], slices[v])``."""
    out: list[int] = []
    v = f = i = 0
    while i < len(ids):
        if ids[i] != video_id:
            out.append(ids[i])
            i += 1
            continue
        j = i
        while j < len(ids) and ids[j] == video_id:
            j += 1
        if v >= len(counts):
            raise ValueError(f"the prompt holds more video groups than its {len(counts)} video(s) have")
        out += [video_id] * lumped(counts[v], slices[v])[f]
        f += 1
        if f == slices[v]:
            v, f = v + 1, 0
        i = j
    if v != len(counts):
        raise ValueError(f"the prompt holds the groups of {v} video(s), not {len(counts)}")
    return out


def surplus_columns(ids: Sequence[int], video_id: int, spans: Sequence[tuple[int, int, int]]) -> list[int]:
    """Columns vLLM's unpruned M-RoPE rule (``Qwen3VLForConditionalGeneration.get_mrope_input_positions``)
    adds for a group holding fewer tokens than a whole slice: it lays out the slice's full grid
    whatever the count, so such a prompt gets more position columns than tokens. ``spans`` are the
    videos' ``(offset, length, tokens per slice)``; the columns returned are the extra ones (after
    each short group's own), in the order of that rule's output."""
    drop: list[int] = []
    extra = i = 0
    while i < len(ids):
        if ids[i] != video_id:
            i += 1
            continue
        j = i
        while j < len(ids) and ids[j] == video_id:
            j += 1
        per = next((p for offset, length, p in spans if offset <= i < offset + length), 0)
        if j - i < per:
            drop += range(i + extra + (j - i), i + extra + per)
            extra += per - (j - i)
        i = j
    return drop
