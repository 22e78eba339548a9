"""Group quantisation of StreamingTOM's memory: asymmetric min/max codes of 2 or 4 bits.

A tensor ``[kvh, S, d]`` (keys post-RoPE or values, as the decoder's cache would hold them) is cut
into groups of ``G`` consecutive tokens, separately for every (head, channel). Each group keeps its
minimum (the zero point) and ``scale = (max - min) / (2^bits - 1)`` clamped to at least 1e-8 (a
constant channel then codes to 0 and dequantises to its minimum exactly). A value's code is
``round_half_to_even(clamp((x - min) / scale, 0, 2^bits - 1))`` with a true division; the
arithmetic runs in the input's dtype, as the reference does (fp16 there; so a half-step can round
differently than in float32).

Codes are packed along the token axis, ``p = 8 / bits`` tokens per byte, the earlier token in the
low bits: byte ``j`` of a (head, channel) is ``sum_i code[p*j + i] << (bits*i)``. ``G`` must be a
multiple of ``p`` so no byte straddles two groups; that makes the layout group-major friendly: a
group's codes ``[kvh, G/p, d]`` can be stored and dequantised on their own and give exactly the
values of dequantising the whole tensor and slicing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Quantized", "quantize", "codes_of", "pack", "unpack", "dequantize", "SCALE_FLOOR"]

SCALE_FLOOR = 1e-8
"""Smallest scale: a constant group would otherwise divide by zero."""


@dataclass(frozen=True)
class Quantized:
    """One tensor's storage: packed codes ``[kvh, S/p, d]`` uint8, scales and minima ``[kvh, S/G, d]``."""

    packed: Tensor
    scales: Tensor
    mins: Tensor
    bits: int
    group_size: int

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.packed, self.scales, self.mins))


def _levels(bits: int) -> int:
    if bits not in (2, 4):
        raise ValueError(f"bits must be 2 or 4, got {bits}")
    return 2**bits - 1


def codes_scales_mins(x: Tensor, group_size: int, bits: int) -> tuple[Tensor, Tensor, Tensor]:
    """Unpacked codes ``[kvh, S, d]`` (uint8), scales and minima ``[kvh, S/G, d]`` in ``x``'s dtype."""
    levels = _levels(bits)
    kvh, length, d = x.shape
    if length % group_size:
        raise ValueError(f"{length} tokens are not whole groups of {group_size}")
    groups = x.reshape(kvh, length // group_size, group_size, d)
    mins = groups.amin(dim=2)
    maxs = groups.amax(dim=2)
    scales = ((maxs - mins) / levels).clamp(min=SCALE_FLOOR)
    normed = (groups - mins[:, :, None]) / scales[:, :, None]
    codes = torch.round(normed.clamp(0, levels)).to(torch.uint8)  # torch.round: half to even
    return codes.reshape(kvh, length, d), scales, mins


def codes_of(x: Tensor, group_size: int, bits: int) -> Tensor:
    """The unpacked codes ``[kvh, S, d]`` (uint8) of ``x`` ``[kvh, S, d]``."""
    return codes_scales_mins(x, group_size, bits)[0]


def pack(codes: Tensor, bits: int) -> Tensor:
    """``[..., S, d]`` codes to ``[..., S/p, d]`` uint8 bytes, the earlier token in the low bits."""
    per = 8 // bits
    *lead, length, d = codes.shape
    if length % per:
        raise ValueError(f"{length} tokens do not fill bytes of {per} codes")
    c = codes.to(torch.uint8).reshape(*lead, length // per, per, d)
    out = torch.zeros(*lead, length // per, d, dtype=torch.uint8, device=codes.device)
    for i in range(per):
        out |= c[..., i, :] << (bits * i)
    return out


def unpack(packed: Tensor, bits: int) -> Tensor:
    """Inverse of :func:`pack`: ``[..., S/p, d]`` bytes to ``[..., S, d]`` uint8 codes."""
    per, mask = 8 // bits, 2**bits - 1
    *lead, nbytes, d = packed.shape
    parts = [(packed >> (bits * i)) & mask for i in range(per)]
    return torch.stack(parts, dim=-2).reshape(*lead, nbytes * per, d)


def quantize(x: Tensor, group_size: int, bits: int) -> Quantized:
    """``x`` ``[kvh, S, d]`` (``S`` whole groups) to its packed storage."""
    codes, scales, mins = codes_scales_mins(x, group_size, bits)
    return Quantized(pack(codes, bits), scales, mins, bits, group_size)


def dequantize(packed: Tensor, scales: Tensor, mins: Tensor, group_size: int, bits: int) -> Tensor:
    """``code * scale + min`` in the scales' dtype: ``[..., S/p, d]`` and ``[..., S/G, d]`` to ``[..., S, d]``."""
    codes = unpack(packed, bits)
    *lead, length, d = codes.shape
    n = length // group_size
    grouped = codes.reshape(*lead, n, group_size, d).to(scales.dtype)
    out = grouped * scales[..., :, None, :] + mins[..., :, None, :]
    return out.reshape(*lead, length, d)
