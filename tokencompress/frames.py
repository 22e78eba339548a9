"""RGB frames: the check every entry point applies, and the one resize every target shares (no torchvision)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import VideoError

__all__ = ["as_frames", "resize_frames"]


def as_frames(frames: np.ndarray | Tensor) -> list[np.ndarray]:
    """Frames as a list of ``[H, W, 3]`` uint8 arrays, or a one-line error naming what is wrong."""
    arr = frames.detach().cpu().numpy() if isinstance(frames, Tensor) else np.asarray(frames)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise VideoError(f"frames must be RGB [N, H, W, 3] (or one [H, W, 3]), got shape {tuple(arr.shape)}")
    if arr.dtype != np.uint8:
        raise VideoError(f"frames must be uint8 RGB (0-255), got {arr.dtype}; convert with .astype(np.uint8)")
    return list(arr)


def resize_frames(
    frames: Sequence[np.ndarray] | np.ndarray | Tensor,
    size: tuple[int, int],
    device: torch.device | str | None = None,
) -> Tensor:
    """uint8 RGB frames (``[F, H, W, 3]`` or a list of ``[H, W, 3]``, sizes may differ) → ``[F, 3, h, w]`` in [0, 1].

    Resizing is bicubic with antialiasing, close to the PIL resize the stock processors use.
    """
    if isinstance(frames, (np.ndarray, Tensor)):
        frames = [frames] if frames.ndim == 3 else list(frames)
    if not frames:
        raise ValueError("no frames to preprocess")
    out = []
    for frame in frames:
        x = torch.as_tensor(np.ascontiguousarray(frame)) if isinstance(frame, np.ndarray) else frame
        if x.dim() != 3 or x.shape[-1] != 3:
            raise ValueError(f"frames must be [H, W, 3] RGB, got shape {tuple(x.shape)}")
        out.append(x)
    same = all(x.shape == out[0].shape for x in out)
    groups = [torch.stack(out)] if same else [x[None] for x in out]
    resized = []
    for g in groups:
        x = g.to(device).permute(0, 3, 1, 2).float() / 255.0
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp_(
                0.0, 1.0
            )
        resized.append(x)
    return torch.cat(resized).contiguous()
