"""Qwen-VL frame preprocessing without torchvision: resize, CLIP-normalise, pack into patches.

transformers' Qwen video processor needs torchvision, which this project cannot rely on (no
torchvision wheel works with the CPU build of torch), so the few steps it performs are done here
with torch alone. The result is what ``Qwen2VisionTransformerPretrainedModel`` expects as
``pixel_values_videos``: one row per ``temporal × patch × patch`` tube, flattened as (channel, time,
row, col) to match the Conv3d patch embedding, with rows in 2×2 merge-block order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ...media.frames import resize_frames

__all__ = ["CLIP_MEAN", "CLIP_STD", "fit_to_grid", "frames_to_patches"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def fit_to_grid(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen's "smart resize": the size closest to ``height × width`` whose sides are multiples of
    ``factor`` (patch × merge = 28) and whose area lies in ``[min_pixels, max_pixels]``, keeping the
    aspect ratio. Out-of-range areas are scaled uniformly, rounding down when shrinking and up when
    growing so the bound holds. Tests check it against transformers' ``smart_resize``.
    """
    if min(height, width) <= 0 or min_pixels <= 0:
        raise ValueError(f"frame size and min_pixels must be positive, got {height}x{width}, {min_pixels}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio {height}x{width} is beyond the 200:1 the Qwen processors accept")
    h, w = (round(side / factor) * factor for side in (height, width))
    if h * w > max_pixels:
        scale = math.sqrt(height * width / max_pixels)
        h, w = (max(factor, math.floor(side / scale / factor) * factor) for side in (height, width))
    elif h * w < min_pixels:
        scale = math.sqrt(min_pixels / (height * width))
        h, w = (math.ceil(side * scale / factor) * factor for side in (height, width))
    return h, w


def frames_to_patches(
    frames: Sequence[np.ndarray] | np.ndarray | Tensor,
    size: tuple[int, int],
    patch: int,
    merge: int,
    temporal: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    mean: tuple[float, float, float] = CLIP_MEAN,
    std: tuple[float, float, float] = CLIP_STD,
) -> tuple[Tensor, tuple[int, int, int]]:
    """``[F, H, W, 3]`` uint8 RGB → (``[t·h·w, 3·temporal·patch²]`` pixels, grid ``(t, h, w)``).

    Frames are resized to ``size`` (bicubic, antialiased, as PIL does for the stock processor),
    scaled to [0, 1] and normalised with ``mean``/``std`` (default: the OpenAI-CLIP values of
    Qwen2/2.5-VL; Qwen3-VL uses 0.5/0.5). A chunk whose frame count is
    not a multiple of ``temporal`` repeats its last frame, the Qwen/LiveCC convention for a
    trailing odd frame, so every temporal slice holds ``temporal`` real frames.
    """
    height, width = size
    if height % (patch * merge) or width % (patch * merge):
        raise ValueError(f"frame size {height}x{width} is not a multiple of {patch * merge}")
    x = resize_frames(frames, (height, width), device)
    x = (x - torch.tensor(mean, device=x.device).view(1, 3, 1, 1)) / torch.tensor(std, device=x.device).view(
        1, 3, 1, 1
    )
    pad = -x.shape[0] % temporal
    if pad:
        x = torch.cat([x, x[-1:].expand(pad, -1, -1, -1)])
    t, gh, gw = x.shape[0] // temporal, height // patch, width // patch
    # (t, time, C, block_row, row_in_block, y, block_col, col_in_block, x)
    x = x.reshape(t, temporal, 3, gh // merge, merge, patch, gw // merge, merge, patch)
    # -> (t, block_row, block_col, row_in_block, col_in_block | C, time, y, x)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    pixels = x.reshape(t * gh * gw, 3 * temporal * patch * patch).to(dtype).contiguous()
    return pixels, (t, gh, gw)
