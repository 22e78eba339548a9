"""DyCoke's temporal token merging (TTM) as pure tensor functions: the whole-clip reference and the
causal per-frame rule a stream uses.

Computed as the authors' ``dycole_ttm`` computes it (KD-TAO/DyCoke ``dd74634``,
``llava/model/llava_arch.py:35-91``, and the streaming adaptation the fixtures pin): per token index, a cosine to the
token at the same index of an anchor frame, and per pruned frame the ``keep`` least similar
tokens, most-changed first (``torch.topk(largest=False)``, sorted). Frames are ``[T, D]`` blocks.
Nothing here reads or writes state; :mod:`.dycoke_ttm` maps the result onto the token carrier.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "WINDOW",
    "ClipSelection",
    "FrameStep",
    "keep_count",
    "pair_similarity",
    "window_similarity",
    "least_similar",
    "stream_step",
    "stream_count",
    "ttm_clip",
]

WINDOW = 4
"""Frames per TTM window (implicit in the reference's loops; not a parameter)."""


def keep_count(k: float, tokens_per_frame: int) -> int:
    """Tokens a pruned frame keeps: ``int((1 - k) * T)`` in IEEE double, truncated toward zero (Q8:
    ``1 - 0.9 = 0.0999...``, so ``T = 10`` at ``k = 0.9`` keeps 0)."""
    return int((1.0 - float(k)) * tokens_per_frame)


def pair_similarity(anchor: Tensor, frame: Tensor) -> Tensor:
    """``[T]`` cosine of each token with the anchor's token at the same index, both L2-normalised
    first and then compared with ``cosine_similarity`` (normalised twice, Q6; arch:47-49)."""
    return F.cosine_similarity(F.normalize(anchor, p=2, dim=1), F.normalize(frame, p=2, dim=1), dim=1)


def window_similarity(anchor: Tensor, frame: Tensor) -> Tensor:
    """``[T]`` raw cosine of each token with the anchor's token at the same index (pass 2, arch:73)."""
    return F.cosine_similarity(anchor, frame, dim=1)


def least_similar(similarity: Tensor, keep: int) -> Tensor:
    """``[keep]`` token indices of the lowest ``similarity``, ascending similarity (most-changed first),
    exactly as ``torch.topk(keep, largest=False)`` orders them (ties: topk's own order, Q9)."""
    return torch.topk(similarity, keep, largest=False).indices


@dataclass(frozen=True)
class ClipSelection:
    """The reference on one clip: ``kept`` ``[N_out]`` input rows in the reference's output order,
    ``sim_pairs`` ``[P, T]`` (frame 2j+1 vs 2j, normalised twice), ``sim_windows`` ``[Q, T]`` (frame
    4j+2 vs 4j, raw) and ``frames`` (per frame: its kept local indices in output order, or None when
    the frame is dropped)."""

    kept: Tensor
    sim_pairs: Tensor
    sim_windows: Tensor
    frames: tuple[Tensor | None, ...]


def _window_starts(num_frames: int, last_window_pass2: bool) -> range:
    # the reference: range(0, F - 4, 4), which skips the last complete window when F % 4 == 0 (Q2)
    return range(0, num_frames - 2 if last_window_pass2 else num_frames - WINDOW, WINDOW)


def ttm_clip(
    x: Tensor,
    tokens_per_frame: int,
    k: float,
    last_window_pass2: bool = False,
    keep_unpaired_last: bool = False,
) -> ClipSelection:
    """The reference ``dycole_ttm`` on a whole clip ``x`` ``[F*T, D]`` (arch:35-91).

    Parity by default: the last complete window gets no pass 2 when ``F % 4 == 0`` (Q2; fixed by
    ``last_window_pass2``), an unpaired last frame is dropped (Q3; kept whole with
    ``keep_unpaired_last``), and a clip with no pass-2 window (``F <= 4`` in parity) is refused, where
    the reference fails inside ``torch.stack`` (Q4). Rows beyond a multiple of ``T`` are refused (Q24).
    """
    t = tokens_per_frame
    if t < 1 or x.dim() != 2 or x.shape[0] % t:
        raise ValueError(f"expected [frames * {t}, dim] rows, got shape {tuple(x.shape)} (Q24)")
    f = x.shape[0] // t
    windows = _window_starts(f, last_window_pass2)
    if f < 2 or len(windows) == 0:
        raise ValueError(
            f"dycoke TTM on a whole clip of {f} frame(s) has no window to prune (the reference raises for "
            f"F <= {WINDOW}, Q4); give at least {WINDOW + 1} frames or use the stream rule"
        )
    keep = keep_count(k, t)
    fr = [x[i * t : (i + 1) * t] for i in range(f)]
    everything = torch.arange(t, device=x.device)
    frames: list[Tensor | None] = [None] * f
    pairs, wins = [], []
    for i in range(0, f - 1, 2):  # pass 1
        s = pair_similarity(fr[i], fr[i + 1])
        pairs.append(s)
        frames[i], frames[i + 1] = everything, least_similar(s, keep)
    if f % 2 and keep_unpaired_last:
        frames[f - 1] = everything  # before pass 2, which may still prune it (phase 2)
    for i in windows:  # pass 2: frame i+2 against the original frame i
        s = window_similarity(fr[i], fr[i + 2])
        wins.append(s)
        frames[i + 2] = least_similar(s, keep)
    kept = torch.cat([idx + i * t for i, idx in enumerate(frames) if idx is not None])
    return ClipSelection(kept, torch.stack(pairs), torch.stack(wins), tuple(frames))


@dataclass(frozen=True)
class FrameStep:
    """One frame of the causal rule: its kept local indices (most-changed first), the similarity
    row it was selected on (None for a phase-0 frame) and the anchors after it."""

    kept: Tensor
    similarity: Tensor | None
    phase0: Tensor | None
    phase2: Tensor | None


def stream_step(
    frame: Tensor, phase: int, keep: int, phase0: Tensor | None, phase2: Tensor | None
) -> FrameStep:
    """The per-frame streaming rule (kind ``dycoke_ttm_stream`` of the fixtures) for ``frame`` ``[T, D]`` at window ``phase`` (0-3).

    Phase 0 is kept whole and becomes the window's anchor; phase 1 is pruned against it (normalised
    cosine); phase 2 against it too (raw cosine) and becomes the second anchor, full; phase 3 against
    the original phase-2 frame (normalised cosine, Q7). For a clip of ``F = 2 (mod 4)`` frames the
    concatenation equals :func:`ttm_clip` bit for bit.
    """
    if phase == 0:
        return FrameStep(torch.arange(frame.shape[0], device=frame.device), None, frame, None)
    anchor = phase2 if phase == 3 else phase0
    if anchor is None:
        raise ValueError(
            f"window phase {phase} needs the anchor frame of its window, which this stream has not seen"
        )
    if anchor.shape != frame.shape:
        raise ValueError(
            f"frame of shape {tuple(frame.shape)} cannot be compared token by token with its anchor of "
            f"shape {tuple(anchor.shape)}; the tokens per frame changed mid-stream"
        )
    s = window_similarity(anchor, frame) if phase == 2 else pair_similarity(anchor, frame)
    return FrameStep(least_similar(s, keep), s, phase0, frame if phase == 2 else phase2)


def stream_count(frames: int, tokens_per_frame: int, k: float, first_phase: int = 0) -> int:
    """Tokens the stream rule keeps of ``frames`` consecutive frames whose first has window phase
    ``first_phase``: ``T`` per phase-0 frame, ``keep`` per other frame (depends on shape only)."""
    keep = keep_count(k, tokens_per_frame)
    whole = sum(1 for i in range(frames) if (first_phase + i) % WINDOW == 0)
    return whole * tokens_per_frame + (frames - whole) * keep
