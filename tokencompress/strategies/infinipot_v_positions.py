"""InfiniPot-V's ``positions: compact``: the kept cache renumbered after a compression (1-D RoPE).

After a compression every layer holds, after the S sinks, the kept text slots (``keep_text``) and per
KV head its own kept visual tokens in time order. Compaction gives them contiguous positions from the
sinks' next position on, the same for every layer and head, and turns each kept key from the position
it was cached at to its new one: keys are cached post-RoPE and RoPE is a rotation per channel pair, so
``k_new = R(p_new) R(p_old)^-1 k_old``, with the rotary embedding's own float32 angles (exactly the
rotation the key carries, whatever its old position). Values carry no position.

The cos / sin of every position come from one table per stream, ``[n, head_dim / 2]`` for positions
``0 .. n - 1``, grown to the next power of two when a larger position shows up and never written in
place (a snapshot shares it). Positions stay bounded, so after the first compactions no compaction
computes any trigonometry: it gathers rows per layer and head and multiplies.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..kernels.rope import half_table, move_with

__all__ = ["MOVING_ROPE", "Moves", "RopeTable", "compaction_tables", "move_kept"]

MOVING_ROPE = frozenset({"dynamic", "longrope"})
"""Rotary embeddings whose frequencies change with the sequence length: a key cannot be turned to a
new position by one rotation there."""

RopeTable = tuple[Tensor, Tensor]
"""``(cos, sin)`` ``[n, head_dim / 2]`` float32 of positions ``0 .. n - 1``."""


class Moves(NamedTuple):
    """One compaction's positions: the table and who moves where."""

    table: RopeTable
    visual: Tensor
    """``[V]`` old positions of the visual slots."""
    text: Tensor | None
    """``[T]`` old positions of the kept text slots (``keep_text``)."""
    positions: Tensor
    """``[T + K]`` new positions of every kept slot after the sinks (text first, then visual),
    contiguous from the sinks' next position."""


def grown(table: RopeTable | None, freqs: Tensor, needed: int, device: torch.device) -> RopeTable:
    """``table``, or a new one covering positions up to ``needed - 1`` (at least 1,024 rows)."""
    if table is not None and table[0].shape[0] >= needed:
        return table
    size = max(1024, 1 << (needed - 1).bit_length())
    return half_table(torch.arange(size, device=device), freqs)


def compaction_tables(
    positions: Tensor,
    table: RopeTable | None,
    freqs: Tensor,
    sinks: int,
    vis: Tensor,
    text: Tensor | None,
    kept: int,
) -> Moves:
    """``positions`` ``[cache length]`` of every slot; ``vis`` / ``text`` the cache indices of the
    visual slots and of the kept text slots; ``kept`` the slots that stay after the sinks."""
    pos = positions.to(vis.device)
    start = int(pos[:sinks].max()) + 1 if sinks else int(pos.min())
    new = torch.arange(start, start + kept, device=vis.device)
    table = grown(table, freqs, max(int(pos.max()), start + kept - 1) + 1, vis.device)
    return Moves(table, pos[vis], pos[text] if text is not None else None, new)


def move_kept(
    keys: Tensor, text_keys: Tensor | None, kept: Tensor, moves: Moves
) -> tuple[Tensor, Tensor | None]:
    """One layer's kept visual keys ``[1, kvh, K, d]`` (head ``h`` holds visual slots ``kept[h]``,
    ``kept`` ``[kvh, K]``) and kept text keys ``[1, kvh, T, d]``, turned to their new positions."""
    cos, sin = moves.table
    t = moves.positions.numel() - kept.shape[1]  # kept text slots come first
    old, new = moves.visual[kept], moves.positions[t:]
    keys = move_with(keys, (cos[old], sin[old]), (cos[new], sin[new]))
    if text_keys is not None and moves.text is not None:
        old, new = moves.text, moves.positions[:t]
        text_keys = move_with(text_keys, (cos[old], sin[old]), (cos[new], sin[new]))
    return keys, text_keys
