"""Summaries of what a kv_cache strategy did, for the ``run`` table, ``--json`` and ``bench``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["summarise_retrieval", "retrieval_overhead", "kv_cache_note", "strategy_stats"]


def summarise_retrieval(retrieved: Sequence[Sequence[int]] | None) -> dict[str, Any] | None:
    """Frames retrieved per layer at one question, summarised (None when nothing was retrieved).

    ``per_layer`` is the count of each layer, ``distinct`` the frames any layer took, ``common``
    those every layer took, ``oldest``/``newest`` the range, ``agreement`` the mean Jaccard
    overlap of each layer with layer 0 (1.0: every layer chose the same frames).
    """
    if not retrieved:
        return None
    sets = [set(ids) for ids in retrieved]
    union = set().union(*sets)
    common = set.intersection(*sets)
    base = sets[0]
    overlap = [len(s & base) / len(s | base) if s | base else 1.0 for s in sets]
    return {
        "layers": len(sets),
        "per_layer": [len(s) for s in sets],
        "distinct": len(union),
        "common": sorted(common),
        "oldest": min(union) if union else None,
        "newest": max(union) if union else None,
        "agreement": sum(overlap) / len(overlap),
    }


def retrieval_overhead(answers: Sequence[Any]) -> dict[str, float] | None:
    """Mean retrieval time per question (ms) and its share of the answer time, from ``Answer`` objects.

    None when no answer spent time retrieving (no retrieving kv_cache strategy).
    """
    timed = [a for a in answers if getattr(a, "retrieved", None) is not None]
    if not timed:
        return None
    ms = sum(a.retrieval_ms for a in timed) / len(timed)
    total = sum(a.total_ms for a in timed) / len(timed)
    return {
        "retrieval_ms": ms,
        "answer_ms": total,
        "share": ms / total if total else 0.0,
        "questions": len(timed),
    }


def kv_cache_note(overhead: dict[str, float]) -> str:
    """One line for a benchmark report."""
    return (
        f"kv_cache retrieval: {overhead['retrieval_ms']:.1f} ms per question, "
        f"{100 * overhead['share']:.1f}% of the answer time ({overhead['answer_ms']:.1f} ms, "
        f"{int(overhead['questions'])} questions)"
    )


def strategy_stats(stream: Any) -> dict[str, Any]:
    """What a stream's kv_cache strategy and decode policy report so far (compressions, dropped
    tokens, quantized bytes, retrieved groups, pruned decode steps ...); empty without either."""
    out: dict[str, Any] = {}
    if stream.kv is not None:
        out["memory"] = stream.kv.memory_stats()
    policy = stream.decoder.policy_stats()
    if policy:
        out["decode_policy"] = policy
    return out
