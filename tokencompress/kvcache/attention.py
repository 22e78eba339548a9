"""The attention ReKV computes in every layer: a sliding window plus sinks at one fixed angle.

All inputs are pre-RoPE and batch-free: queries ``[H, Lq, d]``, keys and values ``[kvh, Lk, d]``
(query head ``h`` reads KV head ``h // (H / kvh)``). The window keys are rotated at positions
relative to the start of the slice the caller hands in (``key_pos``), the queries at their own
positions in that numbering (``query_pos``), and a query sees window key ``j`` only when
``0 <= p - j < n_local``. Sinks are scored un-rotated against the query rotated at the fixed
position ``n_local - 1`` (specs/rekv.md §3.2), so every sink is seen at distance ``n_local - 1``
whatever the query's position. Window and sink logits share one softmax with scale ``1/sqrt(d)``.
All math is float32; the output is ``[Lq, H * d]`` head-major in the query's dtype.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .rope import cos_sin, rotate

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
) -> Tensor:
    """Attention output ``[Lq, H * d]``; ``sink_allowed`` ``[Lq, S]`` masks the sink stage (None: no mask)."""
    heads, lq, d = q.shape
    groups = heads // k.shape[0]
    qc, qs = cos_sin(query_pos, freqs)
    kc, ks = cos_sin(key_pos, freqs)
    qr = rotate(q, qc, qs)
    kr = rotate(k, kc, ks).repeat_interleave(groups, dim=0)
    dist = query_pos[:, None] - key_pos[None, :]
    allowed = (dist >= 0) & (dist < n_local)
    logits = torch.matmul(qr, kr.transpose(-1, -2)).masked_fill(~allowed, float("-inf"))
    values = v.to(torch.float32).repeat_interleave(groups, dim=0)
    if sink_k is not None and sink_k.shape[1] > 0:
        fixed = torch.full((lq,), n_local - 1, dtype=torch.long, device=q.device)
        fc, fs = cos_sin(fixed, freqs)
        q_sink = rotate(q, fc, fs)
        sk = sink_k.to(torch.float32).repeat_interleave(groups, dim=0)
        sink_logits = torch.matmul(q_sink, sk.transpose(-1, -2))
        if sink_allowed is not None:
            sink_logits = sink_logits.masked_fill(~sink_allowed, float("-inf"))
        logits = torch.cat((sink_logits, logits), dim=-1)
        values = torch.cat((sink_v.to(torch.float32).repeat_interleave(groups, dim=0), values), dim=1)
    probs = torch.softmax(logits / math.sqrt(d), dim=-1)
    out = torch.matmul(probs, values)  # [H, Lq, d]
    return out.transpose(0, 1).reshape(lq, heads * d).to(q.dtype)
