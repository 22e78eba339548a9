"""The frames a benchmark streams: ``n`` frames of a clip at the pipeline's rate where it can."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..api.errors import TokenCompressError

__all__ = ["sample_frames"]


def sample_frames(video: str | os.PathLike[str], fps: float, n: int) -> tuple[np.ndarray, float, str | None]:
    """``n`` frames at the pipeline's ``fps``; a clip too short for that is sampled faster, and
    the returned note says so (the caller must show it: the rate changes what a chunk sees)."""
    from ..media.video import iter_frames, probe

    if n < 1:
        raise TokenCompressError(f"need at least 1 frame, got {n}")
    got = [f.rgb for f in iter_frames(video, fps=fps, max_frames=n)]
    note = None
    if len(got) < n:
        info = probe(video)
        faster = n / info.duration_s if info.duration_s > 0 else None
        if faster is not None and faster > fps:
            more = [f.rgb for f in iter_frames(video, fps=faster, max_frames=n)]
            if len(more) > len(got):
                note = (
                    f"{Path(video).name} ({info.duration_s:.1f} s) gives only {len(got)} frame(s) at the "
                    f"pipeline's {fps:g} fps; sampled at {faster:.3g} fps instead to get {len(more)}"
                )
                got, fps = more, faster
        if len(got) < n:
            extra = f"{note}; " if note else ""
            note = f"{extra}only {len(got)} of {n} frames available"
    if not got:
        raise TokenCompressError(f"{video}: no frames were sampled")
    return np.stack(got), fps, note
