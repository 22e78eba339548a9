"""Block scoring and top-k selection: which frames one layer brings back for a question.

Representatives are stored per KV head in float32 (``[n, kvh, d]``, quirk Q2 fixed: the
reference repeats them for every query head in fp16; the math is the same). The score of block
``b`` is ``sum_h <q̄_h, r_{b, g(h)}>`` with ``q̄`` the mean pre-RoPE query over the question's
tokens: an unnormalised dot product, as the reference computes it (Q1; ``similarity="cosine"``
normalises both sides instead). Selection works on chunks of ``chunk_size`` consecutive blocks
(a short last chunk averages over its own length) and returns block ids in time order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Selection", "representatives", "expand_representatives", "block_scores", "select_blocks"]


@dataclass(frozen=True)
class Selection:
    """One layer's choice: block ids ascending, their scores (None when unscored), the margin."""

    indices: Tensor
    scores: Tensor | None
    margin: float | None


def representatives(keys: Tensor, block_size: int) -> Tensor:
    """Pre-RoPE keys ``[kvh, n * bs, d]`` in time order to ``[n, kvh, d]`` float32 block means."""
    kvh, length, d = keys.shape
    n = length // block_size
    return keys[:, : n * block_size].to(torch.float32).reshape(kvh, n, block_size, d).mean(2).transpose(0, 1)


def expand_representatives(reps: Tensor, num_heads: int) -> Tensor:
    """``[n, kvh, d]`` to the reference's layout ``[n, H * d]`` (each KV head repeated per query head)."""
    n, kvh, d = reps.shape
    return reps.repeat_interleave(num_heads // kvh, dim=1).reshape(n, num_heads * d)


def block_scores(reps: Tensor, query: Tensor, similarity: str = "dot") -> Tensor:
    """``[n]`` float32 scores of blocks ``reps`` ``[n, kvh, d]`` for pre-RoPE queries ``[H, Lq, d]``."""
    qbar = query.to(torch.float32).mean(1)  # [H, d]
    kvh = reps.shape[1]
    if similarity == "cosine":
        q_flat = torch.nn.functional.normalize(qbar.reshape(-1), dim=0)
        r_flat = expand_representatives(reps.to(torch.float32), qbar.shape[0])
        return torch.nn.functional.normalize(r_flat, dim=1) @ q_flat
    grouped = qbar.reshape(kvh, qbar.shape[0] // kvh, -1).sum(1)  # [kvh, d]
    return torch.einsum("nkd,kd->n", reps.to(torch.float32), grouped)


def select_blocks(scores: Tensor | None, n: int, topk: int, chunk_size: int = 1) -> Selection:
    """Top ``topk`` blocks of ``n`` by chunk score; ties go to the higher score, then the lower id (Q6)."""
    if n <= topk or scores is None:
        return Selection(torch.arange(n, dtype=torch.long), None, None)
    n_chunks = -(-n // chunk_size)
    padded = torch.zeros(n_chunks * chunk_size, dtype=torch.float32, device=scores.device)
    padded[:n] = scores
    counts = torch.full((n_chunks,), chunk_size, dtype=torch.float32, device=scores.device)
    counts[-1] = n - (n_chunks - 1) * chunk_size
    chunk_scores = padded.view(n_chunks, chunk_size).sum(1) / counts
    keep = topk // chunk_size
    order = torch.sort(chunk_scores, descending=True, stable=True).indices
    chosen = torch.sort(order[:keep]).values
    margin = None
    if keep < n_chunks:
        margin = float(chunk_scores[order[keep - 1]] - chunk_scores[order[keep]])
    blocks = (chosen[:, None] * chunk_size + torch.arange(chunk_size, device=chosen.device)[None]).reshape(-1)
    return Selection(blocks[blocks < n].cpu(), scores, margin)
