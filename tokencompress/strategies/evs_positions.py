"""vLLM's EVS positions on Qwen2.5-VL: per-token M-RoPE channels and the prompt recompute.

The tokencompress targets place kept tokens with the installed model's own rule (every kept token
at the (t, h, w) it had unpruned, text after a chunk where the model puts it: the "model"
convention). These functions are vLLM's ``vllm_evs`` convention, for parity checks and
for callers who build a vLLM-style prompt themselves; the fixtures' ``media_positions``,
``kept_positions`` and ``prompt.*`` tensors check them.

* :func:`media_positions` (``compute_mrope_for_media`` + the model glue): ``[N, 4]`` rows
  ``[t, h, w, W/m]`` with ``t = int(t_idx * tokens_per_second * int(second_per_grid))`` (Q9: the
  seconds per tubelet are truncated to an integer first; ``truncate_second_per_grid=False`` is
  the float rule of vLLM without EVS and of transformers).
* :func:`recompute_positions` (``recompute_mrope_positions``): one prefill step's ``[3, L]``
  positions and the decode delta. Text after the video starts at ``base + W/m`` (Q10, reproduced).
  Fixed, as a clean re-implementation should: each media block is anchored at its own ``<|vision_start|>``
  (Q12: the reference can write a second item over the first), a step starting exactly on the
  first media token is that media's start (Q13: the reference raises ``IndexError``), and the
  delta is taken from the final positions (Q14). Positions are int64 throughout (Q11).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["media_positions", "recompute_positions"]


def media_positions(
    grid_thw: Sequence[int] | Tensor,
    merge: int,
    tokens_per_second: float,
    second_per_grid: float,
    truncate_second_per_grid: bool = True,
) -> Tensor:
    """``[T*(H/m)*(W/m), 4]`` int64 ``[t, h, w, W/m]`` of every token of an unpruned video grid
    ``(T, H, W)`` (patch units), "as if the video started at position 0"."""
    t_n, h_n, w_n = (int(v) for v in (grid_thw.tolist() if isinstance(grid_thw, Tensor) else grid_thw))
    hm, wm = h_n // merge, w_n // merge
    spg = int(second_per_grid) if truncate_second_per_grid else float(second_per_grid)
    # t_idx * tokens_per_second * seconds, truncated (.long()); exact in double for integer inputs
    t = (torch.arange(t_n, dtype=torch.float64) * float(tokens_per_second) * spg).long()
    tt = t[:, None, None].expand(t_n, hm, wm)
    hh = torch.arange(hm)[None, :, None].expand(t_n, hm, wm)
    ww = torch.arange(wm)[None, None, :].expand(t_n, hm, wm)
    width = torch.full((t_n, hm, wm), wm, dtype=torch.long)
    return torch.stack([tt, hh, ww, width], dim=-1).reshape(-1, 4)


def _anchor(starts: Tensor, is_media: Tensor, cursor: int) -> tuple[int, int] | None:
    """(``<|vision_start|>`` column, media tokens of it already computed) for a step at ``cursor``."""
    seen = starts[starts < cursor]
    if seen.numel():
        last = int(seen[-1])
        seen_mm = int(is_media[:cursor].sum())
        before = int(is_media[:last].sum())
        run = is_media[last + 1 :]
        length = int(torch.cumprod(run.long(), 0).sum())  # the media tokens of that item
        if before < seen_mm < before + length:
            return last, seen_mm - before  # the step starts inside that media
        if cursor == last + 1:
            return last, 0  # Q13: the step starts on its first media token
    later = starts[starts >= cursor]
    return (int(later[0]), 0) if later.numel() else None


def recompute_positions(
    input_ids: Tensor,
    blocks: Sequence[Tensor],
    positions: Tensor,
    num_computed_tokens: int,
    vision_start_id: int,
    media_ids: Sequence[int],
) -> tuple[Tensor, int]:
    """``([3, L]`` positions, delta``) after one prefill step of a pruned prompt.

    ``input_ids`` ``[L]`` holds the kept placeholders; ``blocks`` are the ``[4, n_i]`` position
    channels (``[t, h, w, W/m]``, :func:`media_positions` of the kept tokens) of the media rows that
    fall in this step, in prompt order; ``positions`` ``[3, L]`` is the previous step's output (the
    first step: any positions whose columns up to the first ``<|vision_start|>`` are right).
    """
    pos = positions.clone().long()
    ids = input_ids.long()
    is_media = torch.isin(ids, torch.tensor(list(media_ids), dtype=torch.long, device=ids.device))
    starts = torch.nonzero(ids == vision_start_id).reshape(-1)
    cursor = int(num_computed_tokens)
    for block in blocks:
        if block.numel() == 0 or not bool(is_media[cursor:].any()):
            continue
        found = _anchor(starts, is_media, cursor)
        if found is None:
            break
        anchor, mm_seen = found
        base = int(pos[2, anchor]) + 1
        n = block.shape[1]
        lo = anchor + 1 + mm_seen
        pos[:, lo : lo + n] = block[:3].long() + base
        tail = lo + n
        text = (~is_media[tail:]).long()
        pos[:, tail:] = (torch.cumsum(text, 0) + base + int(block[3, 0]) - 1)[None]
        cursor = tail  # Q12 fixed: the next block is anchored after this one
    delta = int(pos.max()) + 1 - pos.shape[1] if pos.numel() else 0
    return pos, delta
