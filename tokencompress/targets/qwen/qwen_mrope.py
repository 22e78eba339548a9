"""3-D M-RoPE positions of one streamed Qwen-VL chunk, taken from the installed model itself.

Qwen's LLM places a video group at ``(start + t, start + h, start + w)`` on the merged grid and
resumes text after it by a rule that changed between transformers releases (5.24: spatial-only
advance, ``start + max(h', w')``). So nothing here re-derives the rule: the positions of a
chunk's *unpruned* layout come from the model's own ``get_rope_index`` on a synthetic row

    <|vision_start|>  <|video_pad|> × n  <|vision_end|>  <one text token>

and the trailing text token tells where the stream's text (or next chunk) continues. The rule
is translation invariant (every position is ``current + offset``), so the row is computed from
0 and shifted to the stream's logical position counter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["ChunkPositions", "chunk_positions"]


@dataclass(frozen=True)
class ChunkPositions:
    """Positions ``[3]``/``[3, n]`` (rows t, h, w) of one chunk wrapped in vision start/end tokens."""

    start: Tensor
    """``<|vision_start|>``."""
    vision: Tensor
    """``[3, n]`` every visual token of the unpruned chunk, slice-major, row-major on the merged grid."""
    end: Tensor
    """``<|vision_end|>``."""
    next_position: int
    """Where the next text token goes (all three rows equal there)."""


def chunk_positions(
    model: Any, grid_thw: Tensor, offset: int, rope_kwargs: dict[str, Any] | None = None
) -> ChunkPositions:
    """Positions of a chunk with ViT grid ``grid_thw`` ``[[t, h, w]]`` starting at ``offset``.

    ``model`` is the inner ``Qwen2VLModel``/``Qwen2_5_VLModel`` (its ``get_rope_index`` and its
    config's token ids are used; the ids need not exist in any tokenizer). ``rope_kwargs`` are
    passed on (Qwen2.5-VL: ``second_per_grid_ts``).
    """
    cfg = model.config
    merge = cfg.vision_config.spatial_merge_size
    t, h, w = (int(v) for v in grid_thw[0].tolist())
    n = t * (h // merge) * (w // merge)
    dev = grid_thw.device
    ids = torch.full((n + 3,), cfg.video_token_id, dtype=torch.long, device=dev)
    ids[0] = cfg.vision_start_token_id
    ids[n + 1 :] = cfg.vision_end_token_id
    types = torch.zeros(n + 3, dtype=torch.int, device=dev)
    types[1 : n + 1] = 2  # video
    pos, _ = model.get_rope_index(
        ids[None], mm_token_type_ids=types[None], video_grid_thw=grid_thw, **(rope_kwargs or {})
    )
    pos = pos[:, 0] + offset  # [3, n + 3]
    after = pos[:, -1]
    if not bool((after == after[0]).all()):
        raise RuntimeError(f"get_rope_index gave a text token unequal t/h/w positions {after.tolist()}")
    return ChunkPositions(pos[:, 0], pos[:, 1 : n + 1], pos[:, n + 1], int(after[0]))
