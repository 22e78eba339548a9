"""Frames to a fixed-size float batch, the one resize every target shares (no torchvision here)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["resize_frames"]


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
