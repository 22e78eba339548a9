"""Self-attention that also returns the attention every key receives, in one pass.

Fused attention (SDPA, FlashAttention) never materialises the probabilities, so a strategy that
needs "how much attention does token ``j`` receive" (StreamingTOM's and VisionZip's SigLIP
saliency) would otherwise recompute the layer's q/k projections and ``QKᵀ`` a second time. Here
the layer's own attention is computed explicitly, ``softmax(scale · QKᵀ + mask) · V`` in blocks
of query rows, and the probabilities' column sums are taken on the way: the same FLOPs as the
attention itself (``QKᵀ`` and ``PV``), plus one sum over each block.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["BLOCK_BYTES", "QUERY_BLOCK", "attention_received", "query_block"]

QUERY_BLOCK = 256
"""Query rows per block: peak memory ``B·H·256·T`` float32 probabilities instead of ``B·H·T·T``."""
BLOCK_BYTES = 64 << 20
"""Probability bytes one block may hold when :func:`query_block` sizes it."""


def query_block(b: int, h: int, t: int, rows: int) -> int:
    """Query rows per block for ``b`` frames, ``h`` heads and ``t`` keys: as many as fit
    :data:`BLOCK_BYTES` of float32 probabilities, at least :data:`QUERY_BLOCK`, at most ``rows``.
    Fewer, larger blocks are faster on CPU (one frame of SigLIP-so400m, 16·729·729 floats, in one
    block measured about 0.8 of the time in 256-row blocks)."""
    return max(1, min(rows, max(QUERY_BLOCK, BLOCK_BYTES // max(1, 4 * b * h * t))))


def attention_received(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    scale: float,
    mask: Tensor | None = None,
    block: int = QUERY_BLOCK,
) -> tuple[Tensor, Tensor]:
    """``(o, received)``: the attention output and each key's mean received attention.

    ``q`` ``[B, H, N, d]``, ``k`` and ``v`` ``[B, H, T, d]`` (positioned as the layer uses them:
    rotary applied, bias included, unscaled); ``mask`` ``[B or 1, N, T]`` additive float32 (0 or
    ``-inf``, e.g. keys outside a query's window), None for none. Arithmetic in float32.

    ``o`` ``[B, H, N, d]`` in ``v``'s dtype; ``received`` ``[B, T]`` float32: the probabilities
    summed over query rows, averaged over heads and divided by ``N`` (a masked key receives 0 from
    that query; the mean still runs over all ``N`` rows). The logits are formed exactly as the
    recompute path forms them (``matmul`` then in-place ``scale`` and ``mask``): for the same
    ``q``/``k`` and the same ``block`` the two saliencies are bit-identical (other blocks: float32
    rounding of the products).
    """
    if q.dim() != 4 or k.dim() != 4 or v.shape[:3] != k.shape[:3] or q.shape[:2] != k.shape[:2]:
        raise ValueError(
            f"expected q [B, H, N, d], k and v [B, H, T, d], got {tuple(q.shape)}, {tuple(k.shape)}, "
            f"{tuple(v.shape)}"
        )
    if block < 1:
        raise ValueError("block must be at least 1")
    qf, kt, vf = q.float(), k.float().transpose(-1, -2), v.float()
    b, h, n, _ = qf.shape
    received = torch.zeros(b, h, k.shape[2], dtype=torch.float32, device=q.device)
    outs = []
    for start in range(0, n, block):
        logits = torch.matmul(qf[:, :, start : start + block], kt).mul_(scale)  # [B, H, c, T]
        if mask is not None:
            logits.add_(mask[:, None, start : start + block])
        p = torch.softmax(logits, dim=-1)
        received += p.sum(dim=2)
        outs.append(torch.matmul(p, vf))
    o = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    return o.to(v.dtype), received.mean(dim=1) / n
