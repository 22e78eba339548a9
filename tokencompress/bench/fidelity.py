"""How far a pipeline's output moved from the baseline's: a proxy to put beside its speed.

Two figures per pipeline, both against the uncompressed baseline on the same frames:

* the cosine similarity of the final visual tokens (what the LLM prefills), token by token.
  Where the pipeline dropped or merged tokens, each surviving original position is compared
  through the carrier's ``assign`` map (the un-merged grid); dropped positions do not count;
* the KL divergence KL(baseline || pipeline) of the first answer token's distribution.

With random weights neither says anything about answer quality; they only show how much each
method perturbs the computation, so a speed / fidelity frontier can be drawn.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..api.tokens import VisualTokens

__all__ = ["fidelity", "token_cosine"]


def token_cosine(base: VisualTokens, pipe: VisualTokens) -> tuple[float, str] | None:
    """Mean cosine of ``pipe``'s tokens to ``base``'s, and how they were matched; None if they cannot be."""
    if pipe.tokens.shape == base.tokens.shape and torch.equal(pipe.source, base.source):
        cos = F.cosine_similarity(pipe.tokens.float(), base.tokens.float(), dim=-1)
        return float(cos.mean()), "token by token"
    if pipe.assign.numel() == base.count and base.is_full_grid():
        alive = pipe.assign >= 0
        if not bool(alive.any()):
            return None
        got = pipe.tokens[pipe.assign[alive]].float()
        cos = F.cosine_similarity(got, base.tokens[alive].float(), dim=-1)
        return float(cos.mean()), "kept positions on the un-merged grid"
    return None


def _kl(base_logits: Tensor, pipe_logits: Tensor) -> float:
    lb, lp = F.log_softmax(base_logits.float(), -1), F.log_softmax(pipe_logits.float(), -1)
    return float(torch.sum(lb.exp() * (lb - lp)))


def fidelity(
    base_tokens: Sequence[VisualTokens],
    pipe_tokens: Sequence[VisualTokens],
    base_logits: Tensor | None,
    pipe_logits: Tensor | None,
) -> dict[str, Any]:
    """Cosine per chunk (mean and min over chunks) and first-token KL, JSON-ready."""
    per_chunk = [token_cosine(b, p) for b, p in zip(base_tokens, pipe_tokens, strict=True)]
    values = [c[0] for c in per_chunk if c is not None]
    out: dict[str, Any] = {
        "token_cosine_mean": statistics.fmean(values) if values else None,
        "token_cosine_min": min(values) if values else None,
        "token_cosine_matched": sorted({c[1] for c in per_chunk if c is not None}),
        "first_token_kl": None,
        "first_token_same": None,
        "proxy_note": "random weights: a proxy of how much the method perturbs the model, not of answer quality",
    }
    if base_logits is not None and pipe_logits is not None:
        out["first_token_kl"] = _kl(base_logits, pipe_logits)
        out["first_token_same"] = bool(int(base_logits.argmax()) == int(pipe_logits.argmax()))
    return out
