"""RGB frames: the check every entry point applies, and the one resize every target shares (no torchvision)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..api.errors import VideoError

__all__ = ["as_frames", "resize_frames"]


def as_frames(frames: np.ndarray | Tensor | Sequence[np.ndarray | Tensor]) -> list[np.ndarray]:
    """Frames as a list of ``[H, W, 3]`` uint8 arrays, or a one-line error naming what is wrong.

    Accepts ``[N, H, W, 3]``, one ``[H, W, 3]`` or a list of ``[H, W, 3]`` frames whose sizes may
    differ. Everything is checked before a frame is queued: a bad frame never reaches (or stays
    in) a stream.
    """
    if isinstance(frames, (list, tuple)):
        out = []
        for i, frame in enumerate(frames):
            arr, dtype = _array(frame, f"frames[{i}]")
            if arr.ndim != 3:
                raise VideoError(f"frames[{i}] must be one RGB frame [H, W, 3], got shape {tuple(arr.shape)}")
            out.extend(_checked(arr[None], f"frames[{i}]", dtype))
        return out
    arr, dtype = _array(frames, "frames")
    if arr.ndim == 3:
        arr = arr[None]
    return _checked(arr, "frames", dtype)


def _array(frames: Any, what: str) -> tuple[np.ndarray, str]:
    """The frames as numpy, and the name of the dtype they came in (numpy has no bfloat16 or float8:
    such tensors are read as float32 so the check below can name them and suggest the conversion)."""
    if not isinstance(frames, Tensor):
        arr = np.asarray(frames)
        return arr, str(arr.dtype)
    name = str(frames.dtype).removeprefix("torch.")
    if frames.device.type == "meta":
        raise VideoError(
            f"{what}: a tensor on the meta device holds no pixels; give real uint8 RGB frames "
            "(a numpy array, or a tensor on the CPU or a GPU)"
        )
    t = frames.detach()
    if t.dtype.is_complex:
        raise VideoError(f"{what} must be uint8 RGB (0-255), got {name}; give real-valued uint8 RGB frames")
    try:
        return t.cpu().numpy(), name
    except TypeError:  # a dtype numpy lacks (bfloat16, float8, ...): every such dtype is a float
        return t.float().cpu().numpy(), name


def _checked(arr: np.ndarray, what: str, dtype: str | None = None) -> list[np.ndarray]:
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise VideoError(f"{what} must be RGB [N, H, W, 3] (or one [H, W, 3]), got shape {tuple(arr.shape)}")
    if arr.shape[1] == 0 or arr.shape[2] == 0:
        raise VideoError(
            f"{what} must have at least one pixel, got shape {tuple(arr.shape)} (an empty frame)"
        )
    if arr.dtype != np.uint8:
        raise VideoError(f"{what} must be uint8 RGB (0-255), got {dtype or arr.dtype}; {_conversion(arr)}")
    return list(arr)


def _conversion(arr: np.ndarray) -> str:
    """The conversion that keeps the picture: ``astype`` alone turns 0..1 floats black."""
    if arr.dtype.kind == "f":
        if arr.size and not np.isfinite(arr).all():
            return "the frames hold NaN or infinite values: fix the source first"
        if arr.size and float(arr.max()) <= 1.0:
            return "for floats in 0..1 use (x * 255).round().astype(np.uint8)"
        return "for floats in 0..255 use x.round().clip(0, 255).astype(np.uint8)"
    if arr.dtype.kind in "iu":
        return "for integers in 0..255 use x.clip(0, 255).astype(np.uint8)"
    if arr.dtype.kind == "b":
        return "for masks use x.astype(np.uint8) * 255"
    return "convert to uint8 RGB first"


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
