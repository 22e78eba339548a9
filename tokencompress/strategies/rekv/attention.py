"""The attention ReKV computes in every layer: a sliding window plus sinks at one fixed angle.

All inputs are pre-RoPE and batch-free: queries ``[H, Lq, d]``, keys and values ``[kvh, Lk, d]``
(query head ``h`` reads KV head ``h // (H / kvh)``). The window keys are rotated at positions
relative to the start of the slice the caller hands in (``key_pos``), the queries at their own
positions in that numbering (``query_pos``), and a query sees window key ``j`` only when
``0 <= p - j < n_local``. Sinks are scored un-rotated against the query rotated at the fixed
position ``n_local - 1``, so every sink is seen at distance ``n_local - 1``
whatever the query's position. Window and sink logits share one softmax with scale ``1/sqrt(d)``.
All math is float32; the output is ``[Lq, H * d]`` head-major in the query's dtype.

Under M-RoPE (``rope`` given) the window mask still counts tokens, but rotations use explicit
``[3, L]`` positions (``query_rope``, ``key_rope``) through the target's own rotary function, and
the fixed sink angle is ``n_local - 1`` on all three axes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ...kernels.rope import cos_sin, rotate

__all__ = ["window_sink_attention"]


def window_sink_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    query_pos: Tensor,
    key_pos: Tensor,
    n_local: int,
    freqs: Tensor,
    sink_k: Tensor | None = None,
    sink_v: Tensor | None = None,
    sink_allowed: Tensor | None = None,
    rope: Callable[[Tensor], tuple[Tensor, Tensor]] | None = None,
    query_rope: Tensor | None = None,
    key_rope: Tensor | None = None,
) -> Tensor:
    """Attention output ``[Lq, H * d]``; ``sink_allowed`` ``[Lq, S]`` masks the sink stage (None: no mask).

    One fused ``scaled_dot_product_attention`` computes both stages: queries are ``[window-rotated
    q ; fixed-angle q]`` and keys ``[window-rotated k ; 0]`` or ``[0 ; sink k]`` along the head
    dimension, so each key meets only its own query rotation and both share one softmax. GQA
    folds the query heads of a KV head into the query axis (no repeated keys).
    """
    heads, lq, d = q.shape
    kvh = k.shape[0]
    groups = heads // kvh
    if rope is None:
        qc, qs = cos_sin(query_pos, freqs)
        kc, ks = cos_sin(key_pos, freqs)
    else:
        assert query_rope is not None and key_rope is not None
        qc, qs = rope(query_rope)
        kc, ks = rope(key_rope)
    qr = rotate(q, qc, qs)  # [H, Lq, d] float32
    kr = rotate(k, kc, ks)  # [kvh, Lk, d]
    dist = query_pos[:, None] - key_pos[None, :]
    allowed = (dist >= 0) & (dist < n_local)  # [Lq, Lk]
    values = v.to(torch.float32)
    if sink_k is not None and sink_k.shape[1] > 0:
        n_sink = sink_k.shape[1]
        if rope is None:
            fc, fs = cos_sin(torch.full((lq,), n_local - 1, dtype=torch.long, device=q.device), freqs)
        else:
            assert query_rope is not None
            fc, fs = rope(torch.full((query_rope.shape[0], lq), n_local - 1, device=q.device))
        qr = torch.cat((qr, rotate(q, fc, fs)), dim=-1)  # [H, Lq, 2d]
        zeros_w = kr.new_zeros(kvh, kr.shape[1], d)
        zeros_s = kr.new_zeros(kvh, n_sink, d)
        sinks = torch.cat((zeros_s, sink_k.to(torch.float32)), dim=-1)
        kr = torch.cat((sinks, torch.cat((kr, zeros_w), dim=-1)), dim=1)  # [kvh, S + Lk, 2d]
        values = torch.cat((sink_v.to(torch.float32), values), dim=1)
        sink_mask = sink_allowed if sink_allowed is not None else allowed.new_ones(lq, n_sink)
        allowed = torch.cat((sink_mask, allowed), dim=1)
    qg = qr.reshape(kvh, groups * lq, qr.shape[-1])
    mask = allowed.repeat(groups, 1)
    out = F.scaled_dot_product_attention(
        qg[None], kr[None], values[None], attn_mask=mask[None], scale=1 / math.sqrt(d)
    )
    return out[0].reshape(heads, lq, d).transpose(0, 1).reshape(lq, heads * d).to(q.dtype)
