"""Rotary embedding for memories that keep keys pre-RoPE and give them positions per call, or
that move cached (post-RoPE) keys to new positions.

ReKV never stores rotated keys: every attention call rotates its keys and queries afresh at
positions that are relative to the call's own key slice. Angles are
built in float32 exactly as the reference (and transformers' default RoPE) build them:
``position * inv_freq``, duplicated over the two halves of the head. :func:`move` renumbers keys
the cache already holds rotated (InfiniPot-V's ``positions: compact``).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["inv_freq", "cos_sin", "rotate", "rotate_by", "move"]


def inv_freq(head_dim: int, theta: float, device: torch.device | str = "cpu") -> Tensor:
    """``[head_dim / 2]`` float32 inverse frequencies of default RoPE."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
    return 1.0 / (theta**exponent)


def cos_sin(positions: Tensor, freqs: Tensor) -> tuple[Tensor, Tensor]:
    """``[L]`` positions (any integer or float dtype) to float32 ``cos, sin`` of shape ``[L, d]``."""
    angles = positions.to(torch.float32)[:, None] * freqs.to(positions.device)[None, :]
    emb = torch.cat((angles, angles), dim=-1)
    return emb.cos(), emb.sin()


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """``x`` ``[..., L, d]`` rotated by per-row angles ``cos, sin`` ``[L, d]`` (float32 math)."""
    xf = x.to(torch.float32)
    return xf * cos + _rotate_half(xf) * sin


def rotate_by(x: Tensor, delta: int, freqs: Tensor) -> Tensor:
    """``x`` ``[..., L, d]`` (already rotated) moved by ``delta`` positions, in ``x``'s dtype.

    RoPE composes additively, so a post-RoPE key at position p becomes the key at p + delta.
    Under Qwen2-VL's M-RoPE the same holds when all three position components move by
    ``delta``: every channel's angle is ``component * inv_freq[c]``, so the shift is ``delta *
    inv_freq[c]`` whichever section the channel belongs to.
    """
    cos, sin = cos_sin(torch.tensor([delta], device=x.device), freqs)
    return rotate(x, cos, sin).to(x.dtype)


def move(x: Tensor, old: Tensor, new: Tensor, freqs: Tensor) -> Tensor:
    """Post-RoPE rows ``x`` ``[..., L, d]`` rotated at positions ``old`` moved to positions ``new``
    (integer tensors broadcastable to ``[..., L]``: one position per row, e.g. per KV head), in
    ``x``'s dtype.

    RoPE is a rotation per channel pair, so the key at ``new`` is the key at ``old`` turned by the
    angle difference. The angles are the rotary embedding's own (``position * inv_freq`` rounded to
    float32, as transformers builds them) and their difference is taken in float64, so the result is
    the key a prefill at ``new`` would have cached, to the float32 rounding of one rotation, however
    large ``old`` is (a difference of float32 products of positions near 30,000 would be off by 1e-3
    rad). A scaling the embedding puts on cos and sin (YaRN) is already in ``x`` and is kept.
    """
    f = freqs.to(device=x.device, dtype=torch.float32)
    a_old = (old.to(x.device, torch.float32)[..., None] * f).double()
    a_new = (new.to(x.device, torch.float32)[..., None] * f).double()
    angles = a_new - a_old
    angles = torch.cat((angles, angles), dim=-1)
    return rotate(x, angles.cos().float(), angles.sin().float()).to(x.dtype)
