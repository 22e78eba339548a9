"""Per-repeat ratios and their spread: the robust figures the report leads with.

Within one repeat, both variants ran chunk by chunk in turn, so each repeat yields one ratio per
figure; the report gives median [min-max] over repeats, which shows the noise instead of hiding
it. Inside a repeat, per-chunk times enter as medians over chunks of one kind (a load spike
then moves one chunk, not the figure); STC-Cacher reference and non-reference chunks are kinds
of their own, weighted by their count for the whole-stream ViT ratio. The visual prefill is
also given as a whole-stream sum, because its per-chunk cost grows with the cache.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

__all__ = ["Spread", "per_repeat_ratios", "spread"]

Spread = dict[str, Any]
"""``{"median", "min", "max", "runs"}`` over repeats."""


def spread(values: Sequence[float | None]) -> Spread | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "runs": list(vals)}


def _ratio(p: float, b: float) -> float | None:
    return p / b if b else None


def _by_kind(kinds: Sequence[str]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(kinds):
        groups.setdefault(k, []).append(i)
    return groups


def one_repeat(
    base: list[dict[str, float]], pipe: list[dict[str, float]], kinds: Sequence[str]
) -> dict[str, float | None]:
    """Ratios of one repeat from per-chunk figures of both variants (same chunks, same order)."""
    med = statistics.median
    groups = _by_kind(kinds)
    out: dict[str, float | None] = {}
    num = sum(len(ix) * med(pipe[i]["vit_ms"] for i in ix) for ix in groups.values())
    den = sum(len(ix) * med(base[i]["vit_ms"] for i in ix) for ix in groups.values())
    out["vit_ms"] = _ratio(num, den)
    for kind, ix in groups.items():
        if kind != "all":
            out[f"vit_ms_{kind}"] = _ratio(
                med(pipe[i]["vit_ms"] for i in ix), med(base[i]["vit_ms"] for i in ix)
            )
    total = lambda rows, key: sum(r[key] for r in rows)  # noqa: E731
    out["prefill_ms"] = _ratio(total(pipe, "prefill_ms"), total(base, "prefill_ms"))
    out["prefill_ms_chunk_median"] = med(
        p["prefill_ms"] / b["prefill_ms"] for p, b in zip(pipe, base, strict=True) if b["prefill_ms"]
    )
    out["prefill_with_stage_ms"] = _ratio(
        total(pipe, "prefill_ms") + total(pipe, "compress_ms"), total(base, "prefill_ms")
    )
    out["stage_share_of_prefill"] = _ratio(total(pipe, "compress_ms"), total(pipe, "prefill_ms"))
    kv = sum(r.get("kv_ms", 0.0) for r in pipe)  # results written before kv_ms existed lack it
    out["kv_share_of_prefill"] = _ratio(kv, total(pipe, "prefill_ms")) if kv else None
    return out


def per_repeat_ratios(
    base_runs: Sequence[dict[str, Any]], pipe_runs: Sequence[dict[str, Any]], kinds: Sequence[str]
) -> dict[str, Spread | None]:
    """median [min-max] over repeats of every per-repeat ratio (runs: ``{"chunks", "answer_ms", "first_token_ms"}``)."""
    rows: list[dict[str, float | None]] = []
    for b, p in zip(base_runs, pipe_runs, strict=True):
        r = one_repeat(b["chunks"], p["chunks"], kinds)
        n = len(b["chunks"])
        e2e_b = (sum(c["total_ms"] for c in b["chunks"]) + b["answer_ms"]) / n
        e2e_p = (sum(c["total_ms"] for c in p["chunks"]) + p["answer_ms"]) / n
        r["e2e_ms_per_chunk"] = _ratio(e2e_p, e2e_b)
        r["ttft_ms"] = _ratio(p["first_token_ms"], b["first_token_ms"])
        rows.append(r)
    keys = [k for k in rows[0]] if rows else []
    return {k: spread([r.get(k) for r in rows]) for k in keys}
