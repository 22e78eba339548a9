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

__all__ = ["inv_freq", "cos_sin", "rotate", "rotate_by", "half_table", "move", "move_with"]


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


def half_table(positions: Tensor, freqs: Tensor) -> tuple[Tensor, Tensor]:
    """``[...]`` positions to float32 ``cos, sin`` of shape ``[..., d / 2]``: one per channel pair,
    the values :func:`cos_sin` repeats over the two halves of the head (the same float32 angles)."""
    angles = positions.to(torch.float32)[..., None] * freqs.to(positions.device, torch.float32)
    return angles.cos(), angles.sin()


def move_with(x: Tensor, old: tuple[Tensor, Tensor], new: tuple[Tensor, Tensor]) -> Tensor:
    """Post-RoPE rows ``x`` ``[..., L, d]`` turned from the angles whose ``(cos, sin)`` are ``old`` to
    those of ``new`` (each broadcastable to ``[..., L, d / 2]``, from :func:`half_table`), in ``x``'s
    dtype: one rotation of each channel pair ``(x[i], x[i + d/2])`` by the difference, with
    ``cos(n - o) = cos n cos o + sin n sin o`` and ``sin(n - o) = sin n cos o - cos n sin o``, in float32."""
    (co, so), (cn, sn) = old, new
    cos, sin = cn * co + sn * so, sn * co - cn * so
    h = x.shape[-1] // 2
    xf = x.to(torch.float32)
    x1, x2 = xf[..., :h], xf[..., h:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)


def move(x: Tensor, old: Tensor, new: Tensor, freqs: Tensor) -> Tensor:
    """Post-RoPE rows ``x`` ``[..., L, d]`` rotated at positions ``old`` moved to positions ``new``
    (integer tensors broadcastable to ``[..., L]``: one position per row, e.g. per KV head), in
    ``x``'s dtype.

    RoPE is a rotation per channel pair, so the key at ``new`` is the key at ``old`` turned by the
    angle difference. The angles are the rotary embedding's own (``position * inv_freq`` rounded to
    float32, then cos and sin in float32, as transformers builds them), so the turn undoes exactly
    the rotation the key was cached with and applies the one a prefill at ``new`` would: the result
    is that prefill's key to float32 rounding, however large ``old`` is (a turn by the float32 angle
    of ``new - old`` would be off by up to 1e-3 rad from old positions near 30,000). A scaling the
    embedding puts on cos and sin (YaRN) is already in ``x`` and is kept. Memories that move many
    rows of few positions build the :func:`half_table` once and call :func:`move_with`.
    """
    return move_with(x, half_table(old.to(x.device), freqs), half_table(new.to(x.device), freqs))
