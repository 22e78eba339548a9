"""Synthetic video frames for conformance runs: smooth motion plus noise, never constant."""

from __future__ import annotations

import numpy as np

__all__ = ["moving_frames"]


def moving_frames(n: int, seed: int = 0, height: int = 40, width: int = 50) -> np.ndarray:
    """``[n, height, width, 3]`` uint8 frames of a drifting gradient with noise.

    Consecutive frames are similar but never equal, so temporal strategies (the Cacher's
    reuse, the Pruner's memory) take both of their branches.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    out = []
    for t in range(n):
        base = (np.sin((xx + 3 * t) / 7.0) + np.cos((yy - 2 * t) / 5.0)) * 60 + 128
        img = base[..., None] + rng.normal(0, 20, size=(height, width, 3))
        out.append(np.clip(img, 1, 255).astype(np.uint8))
    return np.stack(out)
