"""Which decoded frames of a window a query sees: the three deterministic rules.

``rekv_stride`` (ReKV/STC: every ``int(round(avg_fps) / fps)``-th frame of the clip),
``uniform_k`` (the official wrappers' ``linspace(0, n-1, k)``) and ``time_slots`` (the first frame
at or after each multiple of 1/fps, tokencompress's own ``iter_frames``). They agree on 25 fps
sources and drift on 29.97 fps ones, which is why the rule is recorded with every result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..api.errors import TokenCompressError, VideoError

__all__ = ["FrameRule", "RULES", "clip_indices", "select"]

RULES = ("rekv_stride", "uniform_k", "time_slots")
_EPS = 1e-6
FPS_RANGE = (1e-4, 1000.0)
"""Sampling rates eval accepts: beyond them the frame arithmetic overflows (``--fps 1e308``)."""
MAX_FRAMES = 1024
"""The most frames ``uniform_k`` spreads over a window (``--num-frames``)."""


@dataclass(frozen=True)
class FrameRule:
    name: str = "rekv_stride"
    fps: float = 1.0
    k: int = 32

    def __post_init__(self) -> None:
        if self.name not in RULES:
            raise TokenCompressError(f"--frame-rule {self.name}: unknown; choose one of {', '.join(RULES)}")
        if not (self.fps > 0 and math.isfinite(self.fps)):
            raise TokenCompressError(f"--fps must be > 0, got {self.fps}")
        if not FPS_RANGE[0] <= self.fps <= FPS_RANGE[1]:
            raise TokenCompressError(
                f"--fps must be between {FPS_RANGE[0]:g} and {FPS_RANGE[1]:g}, got {self.fps:g}"
            )
        if isinstance(self.k, bool) or not isinstance(self.k, int) or not 1 <= self.k <= MAX_FRAMES:
            raise TokenCompressError(f"--num-frames must be between 1 and {MAX_FRAMES}, got {self.k}")

    def stride(self, avg_fps: float, video: str = "") -> int:
        """``rekv_stride``'s step; refuses a rate the source cannot give (upstream would crash)."""
        step = int(round(avg_fps) / self.fps)
        if step < 1:
            raise VideoError(
                f"--fps {self.fps:g} is above the source rate {round(avg_fps)} fps of {video or 'the video'} "
                f"under --frame-rule rekv_stride; use --fps <= {round(avg_fps)}"
            )
        return step

    def as_dict(self) -> dict[str, object]:
        d: dict[str, object] = {"rule": self.name, "fps": self.fps}
        if self.name == "uniform_k":
            d = {"rule": self.name, "k": self.k}
        return d


def clip_indices(times: Sequence[float], a: float, b: float) -> list[int]:
    """Decoded frames with presentation time ``a <= t < b`` (a clip cut "[a, b)")."""
    return [i for i, t in enumerate(times) if a - _EPS <= t < b - _EPS]


def select(
    rule: FrameRule, times: Sequence[float], avg_fps: float, a: float, b: float, video: str = ""
) -> list[int]:
    """Source frame indices the query's window ``[a, b)`` feeds, in time order.

    Sampling restarts at the window start, as a cut clip would (the window protocol).
    """
    clip = clip_indices(times, a, b)
    if not clip:
        return []
    if rule.name == "rekv_stride":
        return clip[:: rule.stride(avg_fps, video)]
    if rule.name == "uniform_k":
        picks = np.linspace(0, len(clip) - 1, rule.k).astype(int)
        return [clip[i] for i in picks]
    start = times[clip[0]]
    out, next_slot = [], 0.0
    for i in clip:
        rel = times[i] - start
        if rel + _EPS >= next_slot:
            out.append(i)
            next_slot = (math.floor(rel * rule.fps + 1e-9) + 1) / rule.fps
    return out
