"""The attention StreamingTOM's memory computes in every decoder layer.

Inputs are batch-free and already rotated: queries ``[H, Lq, d]``, keys and values ``[kvh, Lk, d]``
(query head ``h`` reads KV head ``h // (H / kvh)``), scale ``1/sqrt(d)``, float32 math, output
``[Lq, H * d]`` head-major in the query's dtype. Two causal alignments of the ``[Lq, Lk]`` score
matrix: ``"bottom_right"`` (the queries are the last ``Lq`` keys: ordinary causal attention over a
past) and ``"upper_left"`` (query ``i`` sees keys ``0..i``; with one query, every key), the
latter being what the reference's retrieval pass gets from SDPA's ``is_causal`` on a non-square
matrix.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["causal_mask", "attend"]


def causal_mask(lq: int, lk: int, align: str, device: torch.device) -> Tensor | None:
    """``[Lq, Lk]`` bool mask (True: attend), or None when every key is visible."""
    i = torch.arange(lq, device=device)[:, None]
    j = torch.arange(lk, device=device)[None, :]
    if align == "upper_left":
        return None if lq == 1 else j <= i
    if align != "bottom_right":
        raise ValueError(f"unknown mask alignment {align!r}")
    return None if lq == 1 else j <= i + (lk - lq)


def attend(q: Tensor, k: Tensor, v: Tensor, align: str = "bottom_right") -> Tensor:
    """Causal attention of rotated ``q`` over rotated ``k`` and ``v``; returns ``[Lq, H * d]``."""
    heads, lq, d = q.shape
    mask = causal_mask(lq, k.shape[1], align, q.device)
    out = F.scaled_dot_product_attention(
        q.to(torch.float32)[None],
        k.to(torch.float32)[None],
        v.to(torch.float32)[None],
        attn_mask=None if mask is None else mask[None, None],
        scale=1 / math.sqrt(d),
        enable_gqa=True,
    )
    return out[0].transpose(0, 1).reshape(lq, heads * d).to(q.dtype)
