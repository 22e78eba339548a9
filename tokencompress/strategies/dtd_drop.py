"""DTD's arithmetic (TimeChat-Online's Differential Token Drop), shared by the strategy and the
reference-layout entry point :func:`token_drop`.

Everything here is a pure function of tensors. :func:`feature_scores` and :func:`pixel_scores`
compare each token with the token at the same grid position in the previous frame;
:func:`frame_budgets` turns scores into per-frame keep counts; the rows to keep are the
``budget`` highest *keep scores* of each frame (:func:`~tokencompress.api.scoring_pruner.select_per_frame`,
ties to the lower index). A keep score is ``-cosine`` (feature) or the pixel difference (pixel):
higher means "changed more". In absolute mode the budget is the number of rows on the keep side
of the threshold, so the top-``budget`` rows are exactly those rows (the reference's strict
``>``/``<``); in relative mode it is ``n - int(n·τ)`` (the reference's truncation).

:func:`token_drop` reproduces the authors' ``Qwen2_5_VLModel.token_drop`` on its own inputs (a
whole sequence with ``<|vision_start|> … <|vision_end|>`` spans and 3-row M-RoPE ids), for the
golden fixtures and offline use; it is the only place where frames can be grouped by temporal id
(quirk Q4) and where pixel mode runs (quirk Q2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..api.scoring_pruner import select_per_frame

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "UNSCORED",
    "DropResult",
    "feature_scores",
    "frame_budgets",
    "pixel_frames",
    "pixel_scores",
    "token_drop",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
"""The normalisation the reference undoes in pixel mode (Qwen2/2.5-VL's image processor)."""

UNSCORED = 3.0e38
"""Keep score of a row with nothing to compare against (a stream's first frame, a position the
previous frame no longer holds): finite, above every real score, so it is always kept."""

Method = Literal["feature", "pixel"]
Mode = Literal["absolute", "relative"]


def feature_scores(prev: Tensor, cur: Tensor) -> Tensor:
    """``[..., n]`` cosine similarity over the last dim, in float32 (Q7).

    torch's formula ``Σ x/max(‖x‖, 1e-8) · y/max(‖y‖, 1e-8)``, as the reference calls it."""
    return F.cosine_similarity(prev.float(), cur.float(), dim=-1)


def pixel_frames(
    pixel_values: Tensor,
    grid_thw: tuple[int, int, int],
    merge: int = 2,
    temporal: int = 2,
    patch: int = 14,
    mean: tuple[float, ...] = CLIP_MEAN,
    std: tuple[float, ...] = CLIP_STD,
) -> Tensor:
    """``[T, temporal, n, C, merge²·patch²]`` de-normalised pixels per merged token.

    ``pixel_values`` is Qwen's ``pixel_values_videos`` ``[T·h·w, C·temporal·patch²]``: rows in
    (grid t, block row, block col, merge, merge) order, columns in (channel, temporal slot, row,
    col) order; de-normalised as ``x·std_c + mean_c`` (float32).
    """
    t, h, w = grid_thw
    c = len(mean)
    n = (h // merge) * (w // merge)
    x = pixel_values.float().reshape(t, n, merge * merge, c, temporal, patch, patch)
    x = x.permute(0, 4, 1, 3, 2, 5, 6)  # [T, slot, n, C, m², p, p]
    std_t = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 1, 1, c, 1, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 1, 1, c, 1, 1, 1)
    return (x * std_t + mean_t).reshape(t, temporal, n, c, -1)


def pixel_scores(prev: Tensor, cur: Tensor) -> Tensor:
    """``[..., n]`` mean absolute difference of ``[..., n, C, P]`` pixel blocks: over pixels, then channels."""
    return (prev - cur).abs().mean(dim=-1).mean(dim=-1)


def frame_budgets(
    keep_scores: Tensor, counts: Tensor, scored: Tensor, threshold: float, mode: Mode, method: Method
) -> Tensor:
    """``[F]`` rows to keep per frame.

    ``keep_scores`` ``[N]`` (frame-major), ``counts`` ``[F]`` rows per frame, ``scored`` ``[N]``
    bool (False: nothing to compare against, always kept). Absolute: the rows with cosine ``<= τ``
    (feature, so ``> τ`` is dropped) or difference ``>= τ`` (pixel, ``< τ`` dropped), plus the
    unscored rows. Relative: ``n - min(int(n·τ), scored)``, ``int`` of the float64 product as the
    reference's Python ``int(n * τ)`` (quirk Q3).
    """
    index = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts)
    if mode == "absolute":
        # keep score is -cosine (feature) or the difference (pixel)
        keep = keep_scores >= -threshold if method == "feature" else keep_scores >= threshold
        keep = keep | ~scored
        return torch.zeros_like(counts).index_add_(0, index, keep.long())
    k = torch.floor(counts.double() * threshold).long()  # counts >= 0: floor is Python's int()
    comparable = torch.zeros_like(counts).index_add_(0, index, scored.long())
    return counts - torch.minimum(k, comparable)


@dataclass(frozen=True)
class DropResult:
    """What :func:`token_drop` decided for one sequence."""

    keep_mask: Tensor
    """``[L]`` bool: True = kept (text and vision start/end are always kept)."""
    scores: Tensor
    """``[F-1, n]`` float32 score of frames 1.. against their predecessor (``[0, n]`` for one frame)."""
    frames: list[Tensor]
    """Sequence indices of every frame's tokens, in frame order."""

    @property
    def dropped_per_frame(self) -> list[int]:
        return [int((~self.keep_mask[f]).sum()) for f in self.frames]


def _visual_positions(input_ids: Tensor, start_id: int, end_id: int) -> Tensor:
    """``[L]`` bool: tokens strictly inside a ``start … end`` span."""
    ids = input_ids.reshape(-1)
    opens = torch.cumsum((ids == start_id).long(), 0)
    closes = torch.cumsum((ids == end_id).long(), 0)
    return (opens > closes) & (ids != start_id)


def _frames(visual: Tensor, t_ids: Tensor, n: int, group_by: str) -> list[Tensor]:
    """Sequence indices of every frame's tokens: temporal-id groups (reference, Q4) or
    consecutive runs of ``n`` visual tokens (one grid frame each)."""
    where = torch.nonzero(visual).squeeze(1)
    if group_by == "grid_frame":
        return list(torch.split(where, n))
    return [where[t_ids[where] == t] for t in torch.unique(t_ids) if bool((t_ids[where] == t).any())]


def token_drop(
    input_ids: Tensor,
    hidden_states: Tensor,
    position_ids: Tensor,
    *,
    grid_thw: tuple[int, int, int],
    threshold: float = 0.5,
    method: Method = "feature",
    mode: Mode = "absolute",
    pixel_values: Tensor | None = None,
    vision_start_id: int = 151652,
    vision_end_id: int = 151653,
    merge: int = 2,
    group_by: Literal["grid_frame", "temporal_id"] = "grid_frame",
    pixel_pairing: Literal["reference", "same_slot"] = "reference",
) -> DropResult:
    """The authors' ``token_drop`` on one sequence (batch 1): which tokens DTD keeps.

    ``input_ids`` ``[1, L]``, ``hidden_states`` ``[1, L, D]`` (visual rows = merged features),
    ``position_ids`` ``[3, 1, L]`` (only the temporal row is read, and only with
    ``group_by="temporal_id"``), ``grid_thw`` the video's ``(t, h, w)`` in ViT patches.
    ``group_by``: ``grid_frame`` (default, the clean rule) or ``temporal_id`` (the reference's
    grouping, quirk Q4). Pixel mode needs ``pixel_values`` (``pixel_values_videos``); its frame
    ``f`` pairs slot 1 of grid frame ``f`` with slot 0 of grid frame ``f-1`` (``reference``, Q2) or
    slot 1 with slot 1 (``same_slot``). Gather the outputs with ``keep_mask``; ids are not renumbered.
    """
    n = (grid_thw[1] // merge) * (grid_thw[2] // merge)
    visual = _visual_positions(input_ids, vision_start_id, vision_end_id)
    frames = _frames(visual, position_ids[0].reshape(-1), n, group_by)
    keep = torch.ones(visual.numel(), dtype=torch.bool, device=visual.device)
    x = hidden_states.reshape(visual.numel(), -1)
    if method == "pixel":
        if pixel_values is None:
            raise ValueError("method 'pixel' needs pixel_values (Qwen's pixel_values_videos)")
        pix = pixel_frames(pixel_values, grid_thw, merge)
        prev_slot = 0 if pixel_pairing == "reference" else 1
    scores = []
    for f in range(1, len(frames)):
        prev, cur = frames[f - 1], frames[f]
        if method == "feature":
            s = feature_scores(x[prev], x[cur])
            keep_score = -s
        else:  # the frame counter indexes grid frames, as the reference does (wrong under Q4)
            s = pixel_scores(pix[f - 1, prev_slot], pix[f, 1])
            keep_score = s
        counts = torch.tensor([cur.numel()], device=keep.device)
        scored = torch.ones_like(keep_score, dtype=torch.bool)
        budget = frame_budgets(keep_score, counts, scored, threshold, mode, method)
        kept = select_per_frame(keep_score, torch.zeros_like(cur), budget)
        drop = torch.ones(cur.numel(), dtype=torch.bool, device=keep.device)
        drop[kept] = False
        keep[cur[drop]] = False
        scores.append(s)
    if not scores:
        out = x.new_zeros(0, n, dtype=torch.float32)
    elif len({s.numel() for s in scores}) == 1:
        out = torch.stack(scores)
    else:  # frames of different sizes (temporal-id groups of uneven length): one row
        out = torch.cat(scores)[None]
    return DropResult(keep, out, frames)
