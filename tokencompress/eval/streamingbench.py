"""StreamingBench: ``src/data/questions_{real,omni,sqa,proactive}.json``.

A question at ``time_stamp`` t sees ``[int(start), int(t))`` with ``start = max(0, t - ctx)``
for a context ``ctx > 0``, else 0 (quirk 13: truncation, where OVO takes the ceiling). SQA
prompts carry the **ground-truth** answers of the video's earlier questions (quirk 10);
proactive items poll from the instruction time (quirk 11). Video paths in the JSON are
resolved against the annotation file's directory, as ``scripts/preprocess.sh`` would.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..api.errors import TokenCompressError
from .guards import inside
from .loading import Durations, LoadOptions, RecordError, Skips, field_of, keep, read_json
from .records import Loaded, Poll, Query

__all__ = ["TASK_CODES", "parse_time", "load"]

BENCH = "streamingbench"
FILES = ("real", "omni", "sqa", "proactive")
TASK_CODES = {
    "Object Recognition": "OP",
    "Object Perception": "OP",
    "Attribute Recognition": "ATP",
    "Attribute Perception": "ATP",
    "Action Recognition": "ACP",
    "Action Perception": "ACP",
    "Clips Summarize": "CS",
    "Event Understanding": "EU",
    "Text-Rich Understanding": "TR",
    "Prospective Reasoning": "PR",
    "Spatial Understanding": "SU",
    "Counting": "CT",
    "Causal Reasoning": "CR",
    "Emotion Recognition": "ER",
    "Scene Understanding": "SCU",
    "Source Discrimination": "SD",
    "Multimodal Alignment": "MA",
    "Misleading Context Understanding": "MCU",
    "Anomaly Context Understanding": "ACU",
    "Sequential Question Answering": "SQA",
    "Proactive Output": "PO",
}
REAL = "Real-Time Visual Understanding"
OMNI = "Omni-Source Understanding"
CONTEXT = "Contextual Understanding"
CATEGORY = {c: REAL for c in ("OP", "ATP", "ACP", "CS", "EU", "TR", "PR", "SU", "CT", "CR")}
CATEGORY.update({c: OMNI for c in ("ER", "SCU", "SD", "MA")})
CATEGORY.update({c: CONTEXT for c in ("MCU", "ACU", "SQA", "PO")})


def parse_time(stamp: str) -> int:
    """Upstream: split on ':', reverse, sum ``int(x) * 60**i`` ("00:24" = 24, "00:00:8" = 8)."""
    try:
        parts = [int(x) for x in reversed(stamp.strip().split(":"))]
    except ValueError:
        raise RecordError(f"time_stamp '{stamp}' is not H:MM:SS") from None
    if any(x < 0 for x in parts):
        raise RecordError(f"time_stamp '{stamp}' is negative")
    return sum(x * 60**i for i, x in enumerate(parts))


def load(root: Path, opts: LoadOptions) -> Loaded:
    data = root / "src" / "data"
    present = [f for f in FILES if (data / f"questions_{f}.json").is_file()]
    if not present:
        raise TokenCompressError(
            f"--data {root} is not a StreamingBench layout: missing src/data/questions_real.json "
            f"(or questions_omni/sqa/proactive.json)"
        )
    skips = Skips(opts.strict, "StreamingBench")
    items: list[dict[str, Any]] = []
    for family in present:
        entries = read_json(data / f"questions_{family}.json")
        if not isinstance(entries, list):
            raise TokenCompressError(f"src/data/questions_{family}.json: the top level must be a list")
        if family == "sqa":
            for v, seq in enumerate(entries):
                seq = seq if isinstance(seq, list) else [seq]
                items.extend(_questions(family, seq, f"{v}.", data, skips, sqa=True))
        else:
            items.extend(_questions(family, entries, "", data, skips))
    durations = Durations()
    queries = []
    for item in keep(items, lambda it: it["task"], opts, CATEGORY):
        try:
            queries.append(_query(item, len(queries), opts, durations))
        except RecordError as err:
            skips.skip(item["qid"], err)
    warnings = [q.meta["warning"] for q in queries if "warning" in q.meta]
    return Loaded(
        BENCH,
        queries,
        dict(skips.counts),
        "src/data/questions_*.json",
        warnings=warnings,
        skipped_ids=skips.ids,
    )


def _questions(
    family: str, entries: list[Any], prefix: str, data: Path, skips: Skips, sqa: bool = False
) -> list[dict[str, Any]]:
    """Flatten entries to questions, building the SQA ground-truth context as it goes."""
    out = []
    history: list[dict[str, str]] = []
    for e, entry in enumerate(entries):
        try:
            rel = field_of(entry, "video_path", str)
            video = os.path.abspath(inside([data.parents[1], data / "videos"], data, rel, RecordError))
            questions = field_of(entry, "questions", list)
        except RecordError as err:
            skips.skip(f"{family}:{prefix}{e}", err)
            continue
        for q, question in enumerate(questions):
            qid = f"{family}:{prefix}{e}:{q}"
            try:
                name = field_of(question, "task_type", str)
                if name not in TASK_CODES:
                    raise RecordError(f"unknown task_type '{name}'")
                item = {
                    "qid": qid,
                    "family": family,
                    "task": TASK_CODES[name],
                    "video": video,
                    "question": field_of(question, "question", str),
                    "t": parse_time(field_of(question, "time_stamp", str)),
                    "time_stamp": question["time_stamp"],
                }
                if item["task"] != "PO" and item["t"] < 1:
                    raise RecordError(
                        f"time_stamp '{item['time_stamp']}' leaves no video before the question"
                    )
                if item["task"] == "PO":
                    item["gt_time"] = parse_time(field_of(question, "ground_truth_time_stamp", str))
                    item["gt_output"] = str(field_of(question, "ground_truth_output"))
                else:
                    item["options"] = _four_options(field_of(question, "options", list))
                    item["answer"] = field_of(question, "answer", str)
                if sqa:  # teacher forcing: earlier questions with their ground truth, never predictions
                    item["history"] = list(history)
                    history.append(
                        {
                            "time_stamp": item["time_stamp"],
                            "question": item["question"],
                            "options": ", ".join(item["options"]),
                            "answer": item["answer"],
                        }
                    )
                out.append(item)
            except RecordError as err:
                skips.skip(qid, err)
    return out


def _four_options(options: list[Any]) -> list[str]:
    """Relabel only when ``options[0]`` lacks "A." (quirk 9); four slots (quirk 8)."""
    options = [str(o) for o in options]
    if not options or not options[0].startswith("A."):
        options = [f"{'ABCD'[i]}. {o}" for i, o in enumerate(options[:4])]
    return options[:4]


def _sqa_context(history: list[dict[str, str]], opts: LoadOptions) -> str:
    """Empty for a video's first question; then a one-time header and one clause per question."""
    if not history:
        return ""
    p = opts.prompts
    return p.get(BENCH, "sqa_header") + "".join(p.fill(BENCH, "sqa_clause", **h) for h in history)


def _query(item: dict[str, Any], order: int, opts: LoadOptions, durations: Durations) -> Query:
    p = opts.prompts
    video, t = item["video"], item["t"]
    duration = durations(video, item["qid"])
    stem = Path(video).stem
    meta: dict[str, Any] = {"time_stamp": item["time_stamp"], "t": t}
    common = dict(
        bench=BENCH, task=item["task"], category=CATEGORY[item["task"]], qid=item["qid"], video=video
    )
    if item["task"] == "PO":
        t0, gt_time = float(t), float(item["gt_time"])
        final = p.fill(BENCH, "proactive", query=item["question"])
        poll_q = p.fill(BENCH, "proactive_poll", question=item["question"], output=item["gt_output"])
        poll = Poll(
            t0, gt_time, item["gt_output"], p.fill(BENCH, "proactive", query=poll_q), final, gt_time + 4
        )
        return Query(
            **common,
            window=(t0, min(gt_time + 4, duration)),
            prompt=final,
            score_kind="proactive",
            gt=[gt_time, item["gt_output"]],
            order=order,
            poll=poll,
            meta=meta,
        )
    start = max(0, t - opts.context) if opts.context > 0 else 0
    a, b = int(start), int(t)
    if b > duration:
        meta["warning"] = (
            f"{item['qid']}: time_stamp {item['time_stamp']} lies beyond the video ({duration:.2f} s); clamped"
        )
    options = "\n".join(item["options"])
    if item["family"] == "sqa":
        prompt = p.fill(
            BENCH,
            "sqa",
            context=_sqa_context(item["history"], opts),
            question=item["question"],
            options=options,
        )
    else:
        prompt = p.fill(BENCH, "mc", question=item["question"], options=options)
    return Query(
        **common,
        window=(float(a), float(min(b, duration))),
        prompt=prompt,
        score_kind="mc_first_char",
        gt=item["answer"],
        order=order,
        clip=str(Path(video).parent / "tmp_60" / f"{stem}_{a}_{b}.mp4"),
        options=tuple(item["options"]),
        meta=meta,
    )
