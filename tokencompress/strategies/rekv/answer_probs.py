"""The attention probabilities a decode step's token has over ReKV's answer cache (for decode policies).

ReKV's answer attention (:meth:`~tokencompress.strategies.rekv.layer.ReKVLayer.answer`) runs the token
over ``[sinks ; retrieved frames ; prompt ; answer so far ; itself]`` with positions renumbered from 0:
the last ``n_local + 1`` entries rotated at those positions, and, once the cache is longer than
``n_local``, the sinks un-rotated against the query rotated at the fixed position ``n_local - 1``, all
in one softmax with scale ``1/sqrt(d)``. This module computes that softmax's probabilities for one
query token, per query head, mapped back onto answer-cache entries (a sink reached both ways adds up),
so a decode policy sees exactly the attention this layer runs, in float32.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ...kernels.rope import cos_sin, rotate
from .layer import ReKVLayer

__all__ = ["answer_probabilities"]


def answer_probabilities(layer: ReKVLayer, q: Tensor, k: Tensor) -> Tensor:
    """``[H, S]`` float32: query ``q`` ``[H, 1, d]`` (pre-RoPE) over the answer cache plus its own key
    ``k`` ``[kvh, 1, d]``; ``S`` = answer-cache length + 1."""
    assert layer.answer_k is not None, "rekv: probabilities outside an answer"
    n_local, d = layer.cfg.n_local, q.shape[-1]
    seq_k = torch.cat((layer.answer_k, k.to(layer.dtype)), dim=1)
    total, heads, kvh = seq_k.shape[1], q.shape[0], seq_k.shape[0]
    groups = heads // kvh
    w0 = total - min(total, 1 + n_local)
    qpos = torch.tensor([total - 1 - w0], device=q.device)
    kpos = torch.arange(0, total - w0, device=q.device)
    rope = layer._answer_rope(w0, 1, kpos)  # M-RoPE layers rotate at their own 3-D positions
    if rope:
        qrot, krot = rope["rope"](rope["query_rope"]), rope["rope"](rope["key_rope"])
    else:
        qrot, krot = cos_sin(qpos, layer.freqs), cos_sin(kpos, layer.freqs)
    qr = rotate(q, *qrot)[:, 0].float()  # [H, d]
    kr = rotate(seq_k[:, w0:], *krot).float().repeat_interleave(groups, dim=0)
    logits = torch.einsum("hd,hsd->hs", qr, kr) / math.sqrt(d)
    logits = logits.masked_fill(((qpos - kpos) >= n_local)[None], float("-inf"))
    s = layer.answer_sinks if total > n_local else 0
    if s:
        fixed = torch.tensor([n_local - 1], device=q.device)
        if rope:
            rows = rope["query_rope"].shape[0]
            frot = rope["rope"](torch.full((rows, 1), n_local - 1, device=q.device))
        else:
            frot = cos_sin(fixed, layer.freqs)
        qf = rotate(q, *frot)[:, 0].float()
        sk = seq_k[:, :s].float().repeat_interleave(groups, dim=0)
        sink = torch.einsum("hd,hsd->hs", qf, sk) / math.sqrt(d)
        far = (total - 1 - torch.arange(s, device=q.device)) >= n_local
        logits = torch.cat((sink.masked_fill(~far[None], float("-inf")), logits), dim=1)
    probs = torch.softmax(logits, dim=-1)
    out = torch.zeros(heads, total, dtype=torch.float32, device=q.device)
    out[:, :s] += probs[:, :s]
    out[:, w0:] += probs[:, s:]
    return out
