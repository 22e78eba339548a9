"""Question-time retrieval of StreamingTOM's memory: which groups one layer brings back.

Every group of ``G`` stored tokens has one representative, its *group key*: the mean pre-RoPE key
of its tokens, per KV head, flattened head-major to ``[kvh * d]`` (element ``h * d + c``). It is
position-free, so retrieval does not depend on the positions a chunk was encoded at. The question's
representative is its pre-RoPE queries ``[H, Lq, d]`` averaged first over the query heads that
share a KV head (query head ``h`` reads KV head ``h // (H / kvh)``), then over the question's tokens,
flattened the same way. A group's score is the cosine of the two (float32, both sides normalised
with eps 1e-12). The budget is given in tokens and rounded *up* to whole groups; when it covers
every stored group they all come back unscored, else the best-scoring groups are kept and returned
in time order. Ties go to the higher score, then the lower group (the reference leaves the order
to ``topk``). Group means and the top-k with its tie rule are ReKV's own kernels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..rekv.retrieval import Selection, representatives, select_blocks

__all__ = ["Selection", "budget_groups", "group_keys", "query_repr", "similarity", "select_groups"]

EPS = 1e-12


def budget_groups(budget_tokens: int, group_size: int) -> int:
    """Groups a budget of ``budget_tokens`` buys: rounded up (12544 tokens of 50 → 251 groups)."""
    return math.ceil(budget_tokens / group_size)


def group_keys(keys: Tensor, group_size: int) -> Tensor:
    """Pre-RoPE keys ``[kvh, n * G, d]`` to float32 group keys ``[n, kvh * d]`` (head-major)."""
    reps = representatives(keys, group_size)  # [n, kvh, d] float32
    return reps.reshape(reps.shape[0], -1)


def query_repr(query: Tensor, num_kv_heads: int) -> Tensor:
    """Pre-RoPE question queries ``[H, Lq, d]`` to ``[kvh * d]``: GQA-group mean, then token mean."""
    heads, lq, d = query.shape
    grouped = query.to(torch.float32).reshape(num_kv_heads, heads // num_kv_heads, lq, d)
    return grouped.mean(1).mean(1).reshape(-1)


def similarity(keys: Tensor, query: Tensor) -> Tensor:
    """``[n]`` cosine of group keys ``[n, kvh * d]`` with a question representative ``[kvh * d]``."""
    k = F.normalize(keys.to(torch.float32), dim=-1, eps=EPS)
    q = F.normalize(query.to(torch.float32), dim=-1, eps=EPS)
    return k @ q


def select_groups(keys: Tensor, query: Tensor, budget: int) -> Selection:
    """The ``budget`` groups (or all, unscored, when they fit) for a question representative."""
    n = keys.shape[0]
    if n <= budget:
        return select_blocks(None, n, budget)
    return select_blocks(similarity(keys, query), n, budget)
