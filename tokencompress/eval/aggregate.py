"""Benchmark formulas from scored predictions, and retention between two sets of scores.

Task scores, category scores and the total are computed the way each benchmark's own scorer
does (OVO: category = mean of its tasks, total = mean of the 3 categories; StreamingBench: micro;
MLVU (lmms-eval): mean over all 7 task types with absent types 0; EgoSchema: a fraction).
Retention is ``100 * s_pipeline / s_baseline`` of these **aggregated** scores (never a mean of
per-item ratios), ``None`` where the baseline scored 0.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from statistics import mean
from typing import Any

from .offline import MLVU_TYPES
from .ovo_bench import CATEGORIES as OVO_CATEGORIES
from .records import Query

__all__ = ["aggregate", "retention"]


def _acc(values: list[float]) -> float:
    return 100.0 * sum(values) / len(values)


def aggregate(
    bench: str, queries: dict[str, Query], records: Iterable[dict[str, Any]], mode: str
) -> dict[str, Any]:
    """``records``: scored predictions of one variant (``score`` 0/1, ``None`` = not counted)."""
    by_task: dict[str, list[float]] = defaultdict(list)
    by_cat: dict[str, list[float]] = defaultdict(list)
    proactive: list[dict[str, int]] = []
    for r in records:
        q = queries[r["qid"]]
        if isinstance(r["score"], dict):
            proactive.append(r["score"])
            continue
        if r["score"] is None:
            continue
        by_task[q.task].append(float(r["score"]))
        by_cat[q.category].append(float(r["score"]))
    tasks = {t: {"score": _acc(v), "n": len(v)} for t, v in sorted(by_task.items())}
    out: dict[str, Any] = {"tasks": tasks, "categories": {}, "total": None}
    if bench == "ovo-bench":
        cats = {}
        for cat, members in OVO_CATEGORIES.items():
            present = [tasks[t]["score"] for t in members if t in tasks]
            if present:
                cats[cat] = {"score": mean(present), "n": sum(tasks[t]["n"] for t in members if t in tasks)}
        out["categories"] = cats
        out["total"] = mean(c["score"] for c in cats.values()) if cats else None
        out["total_formula"] = "mean of the 3 category scores (OVO-Bench v2)"
        if len(cats) < 3:
            out["total_formula"] += f"; only {len(cats)} of 3 categories present"
        out["total_v1"] = mean(t["score"] for t in tasks.values()) if tasks else None
    elif bench == "mlvu" and mode == "official":
        out["categories"] = {c: {"score": _acc(v), "n": len(v)} for c, v in sorted(by_cat.items())}
        out["total"] = sum(tasks[t]["score"] if t in tasks else 0.0 for t in MLVU_TYPES) / len(MLVU_TYPES)
        out["total_formula"] = "mean over the 7 MLVU task types, absent types counted 0 (lmms-eval)"
    elif bench == "egoschema" and mode == "official":
        for t in tasks.values():
            t["score"] /= 100.0
        allv = [s for v in by_task.values() for s in v]
        out["total"] = sum(allv) / len(allv) if allv else None
        out["total_formula"] = "fraction correct, 0-1 (lmms-eval egoschema_subset)"
    else:
        out["categories"] = {c: {"score": _acc(v), "n": len(v)} for c, v in sorted(by_cat.items())}
        allv = [s for v in by_task.values() for s in v]
        out["total"] = _acc(allv) if allv else None
        out["total_formula"] = "micro accuracy over all scored questions"
    if proactive:
        n = len(proactive)
        pro = {
            "n": n,
            "time_accuracy": sum(p["time"] for p in proactive) / n,
            "answer_accuracy": sum(p["answer"] for p in proactive) / n,
        }
        out["proactive"] = pro
        out["tasks"]["PO"] = {
            "score": 100.0 * pro["answer_accuracy"],
            "n": n,
            "time": 100.0 * pro["time_accuracy"],
        }
        if out["total"] is None:
            out["total"] = 100.0 * pro["answer_accuracy"]
            out["total_formula"] = "proactive answer accuracy"
    out["n"] = sum(t["n"] for t in out["tasks"].values())
    return out


def retention(base: dict[str, Any], pipe: dict[str, Any]) -> dict[str, Any]:
    """Retention and delta (points) for the total, every category and every task both have."""

    def pair(b: float | None, p: float | None) -> dict[str, float | None]:
        if b is None or p is None:
            return {"retention": None, "delta": None}
        return {"retention": (100.0 * p / b) if b != 0 else None, "delta": p - b}

    return {
        "total": pair(base.get("total"), pipe.get("total")),
        "categories": {
            c: pair(v["score"], pipe["categories"][c]["score"])
            for c, v in base.get("categories", {}).items()
            if c in pipe.get("categories", {})
        },
        "tasks": {
            t: pair(v["score"], pipe["tasks"][t]["score"])
            for t, v in base.get("tasks", {}).items()
            if t in pipe.get("tasks", {})
        },
    }
