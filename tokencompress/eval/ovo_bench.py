"""OVO-Bench: ``data/ovo_bench_new.json`` (v2), clips ``[0, min(ceil(t), duration))`` per query.

Backward and real-time records are one MC query each; a forward record (REC, SSR, CRR) is one
query per ``test_info`` probe, named ``<id>_<i>`` by its position in the file (never sorted:
34 SSR records are unsorted upstream). Scores follow ``utils/OVOBenchScore.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..api.errors import TokenCompressError
from .guards import inside, realtime
from .loading import Durations, LoadOptions, RecordError, Skips, ceil_end, field_of, keep, read_json, require
from .records import Loaded, Query

__all__ = ["CATEGORIES", "TASK_CATEGORY", "load"]

BENCH = "ovo-bench"
CATEGORIES = {
    "Backward Tracing": ("EPM", "ASI", "HLD"),
    "Real-Time Visual Perception": ("STU", "OJR", "ATR", "ACR", "OCR", "FPD"),
    "Forward Active Responding": ("REC", "SSR", "CRR"),
}
TASK_CATEGORY = {t: c for c, ts in CATEGORIES.items() for t in ts}
ANNOTATION = "data/ovo_bench_new.json"


def load(root: Path, opts: LoadOptions) -> Loaded:
    path = require(root, ANNOTATION, "OVO-Bench")
    require(root, "data/src_videos", "OVO-Bench")
    records = read_json(path)
    if not isinstance(records, list):
        raise TokenCompressError(f"{ANNOTATION}: the top level must be a list of records")
    skips = Skips(opts.strict, ANNOTATION)
    parsed = []
    for n, rec in enumerate(records):
        try:
            task = field_of(rec, "task", str)
            if task not in TASK_CATEGORY:
                raise RecordError(f"unknown task '{task}'")
            field_of(rec, "id", int)
            field_of(rec, "video", str)
            parsed.append(rec)
        except RecordError as err:
            skips.skip(f"record {n}", err)
    durations = Durations()
    queries: list[Query] = []
    for rec in keep(parsed, lambda r: r["task"], opts, TASK_CATEGORY):
        try:
            queries.extend(_queries(root, rec, opts, durations, len(queries)))
        except RecordError as err:
            skips.skip(f"record id {rec['id']}", err)
    return Loaded(BENCH, queries, dict(skips.counts), ANNOTATION, skipped_ids=skips.ids)


def _queries(
    root: Path, rec: dict[str, Any], opts: LoadOptions, durations: Durations, start: int
) -> list[Query]:
    task, rid = rec["task"], rec["id"]
    videos = root / "data" / "src_videos"  # opaque names: '&' and '=' stay as they are
    video = inside([root, videos], videos, rec["video"], RecordError)
    chunks = root / "data" / "chunked_videos"
    p = opts.prompts
    common = dict(bench=BENCH, task=task, category=TASK_CATEGORY[task], video=video)
    if task in ("REC", "SSR", "CRR"):
        probes = field_of(rec, "test_info", list)
        if task == "REC":
            question = p.fill(BENCH, "rec_question", activity=field_of(rec, "activity", str))
        elif task == "CRR":
            question = field_of(rec, "question", str)
        out = []
        for i, probe in enumerate(probes):
            t = realtime(field_of(probe, "realtime", (int, float)), f"test_info[{i}].realtime", RecordError)
            if task == "REC":
                prompt, gt = p.fill(BENCH, "rec", question=question), field_of(probe, "count", int)
            elif task == "SSR":
                prompt, gt = (
                    p.fill(BENCH, "ssr", step=field_of(probe, "step", str)),
                    field_of(probe, "type", int),
                )
            else:
                prompt, gt = p.fill(BENCH, "crr", question=question), field_of(probe, "type", int)
            kind = "count_digits" if task == "REC" else "yes_no_ovo"
            duration = durations(video, f"record id {rid}")
            out.append(
                Query(
                    **common,
                    qid=f"{rid}_{i}",
                    window=(0.0, ceil_end(t, duration)),
                    prompt=prompt,
                    score_kind=kind,
                    gt=gt,
                    order=start + i,
                    clip=str(chunks / f"{rid}_{i}.mp4"),
                    meta={"realtime": t},
                )
            )
        return out
    t = realtime(field_of(rec, "realtime", (int, float)), "realtime", RecordError)
    options = field_of(rec, "options", list)
    if len(options) > 10:
        raise RecordError(f"{len(options)} options; at most 10 (A-J)")
    gt = field_of(rec, "gt", int)
    if not 0 <= gt < len(options):
        raise RecordError(f"gt {gt} is outside the {len(options)} options")
    letters = "ABCDEFGHIJ"
    line = p.get(BENCH, "option_sep").join(
        p.fill(BENCH, "option", letter=letters[i], text=o) for i, o in enumerate(options)
    ) + p.get(BENCH, "option_end")
    prompt = p.fill(BENCH, "mc", question=field_of(rec, "question", str), options=line)
    duration = durations(video, f"record id {rid}")
    return [
        Query(
            **common,
            qid=str(rid),
            window=(0.0, ceil_end(t, duration)),
            prompt=prompt,
            score_kind="mc_substring",
            gt=gt,
            order=start,
            clip=str(chunks / f"{rid}.mp4"),
            options=tuple(options),
            meta={"realtime": t},
        )
    ]
