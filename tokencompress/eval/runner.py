"""Run every variant on the same queries and frames, interleaved per video, sharded by video.

For each video group of this rank: decode the video once, then run the baseline and each
pipeline on it in turn (each pipeline's hooks installed only for its own turn), appending every
answer to this rank's log at once. Rank 0 gathers all ranks' records, checks that every query
has exactly one answer per variant, scores them (pure functions of the stored response, so the
scorer mode can change without re-running) and writes the results.
"""

from __future__ import annotations

import hashlib
import json
import platform
import random
import sys
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..api.errors import TokenCompressError
from .aggregate import aggregate, retention
from .engine import Engine
from .outputs import PredictionLog, read_logs, write_results
from .protocols import run_group
from .records import Loaded, Query
from .report import format_table, speed_ratios, speed_summary, write_plot
from .sampling import FrameRule
from .scoring import score_call, score_proactive
from .shard import Shard, assign
from .video_source import VideoSource

__all__ = ["EVAL_VERSION", "Settings", "evaluate", "group_queries", "score_record"]

EVAL_VERSION = "1"


@dataclass
class Settings:
    benchmark: str
    protocol: str = "reference"
    rule: FrameRule = field(default_factory=FrameRule)
    scoring: str = "official"
    max_new_tokens: int = 16
    wrap: str = "chat"
    model: str = ""
    random_weights: bool | None = None
    prompts: str = ""
    context: float = -1.0
    device: str = "cpu"

    def run_key(self) -> str:
        """What makes two answers to the same query interchangeable on resume (scoring is not:
        it is recomputed from the stored response)."""
        key = [self.benchmark, self.protocol, self.rule.as_dict(), self.max_new_tokens, self.wrap, self.model]
        key += [self.prompts, self.context]
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def group_queries(queries: list[Query]) -> list[tuple[str, list[Query]]]:
    """Groups (one source video each) sorted by key, queries in annotation order within."""
    groups: dict[str, list[Query]] = defaultdict(list)
    for q in queries:
        groups[q.group_key].append(q)
    return sorted(groups.items())


def score_record(query: Query, rec: dict[str, Any], mode: str) -> dict[str, Any]:
    if query.poll is not None:
        rec["extracted"] = rec.get("response")
        rec["score"] = score_proactive(rec.get("dialog", []), query.poll.gt_time, query.poll.gt_output)
        return rec
    # a per-query seed keeps EgoSchema's random fallback identical however the run is sharded
    rec["extracted"], rec["score"] = score_call(query, rec.get("response"), mode, random.Random(query.qid))
    return rec


def evaluate(
    loaded: Loaded,
    engines: list[Engine],
    settings: Settings,
    out: Path,
    shard: Shard | None = None,
    progress: bool = False,
) -> dict[str, Any] | None:
    """Results on rank 0 (``None`` on other ranks). ``engines[0]`` is the baseline."""
    shard = shard or Shard()
    queries = {q.qid: q for q in loaded.queries}
    if len(queries) != len(loaded.queries):
        raise TokenCompressError(f"{loaded.source}: duplicate query ids")
    run_key = settings.run_key()
    done, stale, log_warnings = read_logs(out, run_key)
    for w in log_warnings if shard.rank == 0 else []:
        warnings.warn(w, RuntimeWarning, stacklevel=2)
    groups = group_queries(loaded.queries)
    mine = assign(groups, shard.rank, shard.world)
    log = PredictionLog(out, shard.rank)
    records: list[dict[str, Any]] = []
    from tqdm import tqdm

    bar = tqdm(
        total=len(mine) * len(engines),
        unit="run",
        desc="eval",
        disable=not progress or shard.rank != 0,
        file=sys.stderr,
        leave=False,
    )
    try:
        for key, qs in mine:
            source: VideoSource | None = None
            for engine in engines:
                finished = {q.qid for q in qs if (q.qid, engine.key) in done}
                records += [done[(qid, engine.key)] for qid in sorted(finished)]
                if len(finished) < len(qs):
                    source = source or VideoSource(key)
                    with engine.active():
                        for rec in run_group(engine, qs, source, settings.rule, settings.protocol, finished):
                            rec.update(run_key=run_key, rank=shard.rank, bench=settings.benchmark)
                            score_record(queries[rec["qid"]], rec, settings.scoring)
                            log.write([rec])
                            records.append(rec)
                bar.update(1)
            del source  # the group's frames go with it
    finally:
        log.close()
        bar.close()
    gathered = shard.gather(records)
    if gathered is None:
        return None
    records = [r for part in gathered for r in part]
    return _finish(loaded, engines, settings, out, records, shard, stale, log_warnings)


def _finish(
    loaded: Loaded,
    engines: list[Engine],
    settings: Settings,
    out: Path,
    records: list[dict[str, Any]],
    shard: Shard,
    stale: int,
    log_warnings: tuple[str, ...] | list[str] = (),
) -> dict[str, Any]:
    queries = {q.qid: q for q in loaded.queries}
    index = {e.key: i for i, e in enumerate(engines)}
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for rec in records:
        seen.setdefault((rec["qid"], rec["pipeline_key"]), rec)
    missing = [(q, e.name) for q in queries for e in engines if (q, e.key) not in seen]
    if missing or len(seen) != len(records):
        raise TokenCompressError(
            f"gathered predictions are inconsistent: {len(missing)} missing (e.g. {missing[:1]}), "
            f"{len(records) - len(seen)} duplicated; the per-rank logs in {out} are kept for a rerun"
        )
    ordered = sorted(seen.values(), key=lambda r: (queries[r["qid"]].order, index[r["pipeline_key"]]))
    for rec in ordered:
        score_record(queries[rec["qid"]], rec, settings.scoring)
    by_variant: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rec in ordered:
        by_variant[rec["pipeline_key"]].append(rec)
    variants = []
    for e in engines:
        recs = by_variant[e.key]
        variants.append(
            {
                "name": e.name,
                "key": e.key,
                "config": e.bound.config.to_dict() if hasattr(e, "bound") else None,
                "scores": aggregate(settings.benchmark, queries, recs, settings.scoring),
                "speed": speed_summary(recs),
            }
        )
    for v in variants[1:]:
        v["retention"] = retention(variants[0]["scores"], v["scores"])
        v["speed_ratios"] = speed_ratios(variants[0]["speed"], v["speed"])
    results = {
        "benchmark": settings.benchmark,
        "source": loaded.source,
        "protocol": settings.protocol,
        "frames": settings.rule.as_dict(),
        "fps": settings.rule.fps if settings.rule.name != "uniform_k" else None,
        "scoring": settings.scoring,
        "prompt_wrap": settings.wrap,
        "prompts": settings.prompts,
        "context": settings.context,
        "max_new_tokens": settings.max_new_tokens,
        "model": settings.model,
        "random_weights": settings.random_weights,
        "queries": len(queries),
        "skipped": loaded.skipped,
        "skipped_ids": loaded.skipped_ids,
        "warnings": loaded.warnings,
        "ranks": shard.world,
        "device": settings.device,
        # speed ratios are only valid with one rank per device (docs/design.md §9)
        "ranks_per_device": _ranks_per_device(settings.device, shard.world),
        "machine": _machine(),
        "stale_log_lines": stale,
        "log_warnings": list(log_warnings),
        "versions": _versions(),
        "variants": variants,
    }
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in ordered)
    png = write_plot(results, out / "retention.png") if len(variants) > 1 else None
    files = {"predictions.jsonl": lines, "results.json": json.dumps(results, indent=2) + "\n"}
    files["results.md"] = format_table(results)
    write_results(out, {**files, **({"retention.png": png} if png is not None else {})})
    results["plot"] = str(out / "retention.png") if png is not None else None
    return results


def _ranks_per_device(device: str, world: int) -> int:
    if device.startswith("cuda"):
        import torch

        return -(-world // max(1, torch.cuda.device_count()))
    return world


def _machine() -> dict[str, Any]:
    """The ISA, oneDNN/MKL, cores and threads the speed figures hold for (:mod:`..kernels.machine`)."""
    from ..kernels.machine import describe

    return describe()


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"eval_harness": EVAL_VERSION, "python": platform.python_version()}
    for dist in ("tokencompress", "torch", "transformers", "av"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "not installed"
    return out
