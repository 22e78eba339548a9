"""VideoMME, EgoSchema (Subset) and MLVU dev: whole-video multiple choice.

Two input forms: the lmms-eval layout (dataset rows as JSON or parquet, videos by id under the
same root), scored with lmms-eval 0.7.x's rules; or a ReKV-format JSON file (STC's offline
path: ``{video_id, video_path, duration, conversations: [...]}``), scored as ReKV does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..api.errors import TokenCompressError
from .guards import inside
from .loading import Durations, LoadOptions, RecordError, Skips, field_of, keep, read_json
from .records import Loaded, Query

__all__ = ["LAYOUTS", "MLVU_TYPES", "load"]

MLVU_TYPES = ("anomaly_reco", "count", "ego", "needle", "order", "plotQA", "topic_reasoning")
LAYOUTS = {
    # bench: (annotation candidates, video directory, id field, extensions)
    "videomme": (
        ("videomme/videomme.json", "videomme/*.parquet"),
        "videomme/data",
        "videoID",
        (".mp4", ".MP4", ".mkv"),
    ),
    "egoschema": (
        ("egoschema/subset.json", "egoschema/Subset/*.parquet"),
        "egoschema/videos",
        "video_idx",
        (".mp4",),
    ),
    "mlvu": (("mlvu/dev.json", "mlvu/*.parquet"), "mlvu", "video_name", ("",)),
}


def load(bench: str, data: Path, opts: LoadOptions) -> Loaded:
    if data.is_file() and data.suffix == ".json":
        return _load_rekv(bench, data, opts)
    names, video_dir, id_field, exts = LAYOUTS[bench]
    rows, source = _rows(data, names)
    if rows is None:
        raise TokenCompressError(
            f"--data {data} is not a {bench} layout: missing {names[0]} (or {names[1]}); "
            f"a ReKV-format annotation is given as the .json file itself"
        )
    skips = Skips(opts.strict, source)
    parsed = []
    for n, row in enumerate(rows):
        try:
            parsed.append(_parse_row(bench, row, data, video_dir, id_field, exts, n))
        except RecordError as err:
            skips.skip(f"row {n}", err)
    known = MLVU_TYPES if bench == "mlvu" else {r["task"] for r in parsed}
    durations = Durations()
    queries = []
    for item in keep(parsed, lambda r: r["task"], opts, known):
        durations(item["video"], item["qid"])
        queries.append(_query(bench, item, len(queries), opts))
    return Loaded(bench, queries, dict(skips.counts), source, skipped_ids=skips.ids)


def _rows(data: Path, names: tuple[str, ...]) -> tuple[list[Any] | None, str]:
    for name in names:
        if "*" in name:
            folder, pattern = name.rsplit("/", 1)
            files = sorted((data / folder).glob(pattern)) if (data / folder).is_dir() else []
            if files:
                return [r for f in files for r in _parquet(f)], name
        elif (data / name).is_file():
            rows = read_json(data / name) if not name.endswith(".jsonl") else None
            if not isinstance(rows, list):
                raise TokenCompressError(f"{data / name}: the top level must be a list of rows")
            return rows, name
    return None, ""


def _parquet(path: Path) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise TokenCompressError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from None
    return pq.read_table(path).to_pylist()


def _find_video(data: Path, folder: Path, stem: str, exts: tuple[str, ...]) -> str:
    for ext in exts:
        if (folder / f"{stem}{ext}").is_file():
            return inside([data, folder], folder, f"{stem}{ext}", RecordError)
    return inside([data, folder], folder, f"{stem}{exts[0]}", RecordError)


def _parse_row(
    bench: str, row: dict[str, Any], data: Path, video_dir: str, id_field: str, exts: tuple[str, ...], n: int
) -> dict[str, Any]:
    video = _find_video(data, data / video_dir, str(field_of(row, id_field)), exts)
    options = row.get("options") if bench == "videomme" else row.get("option")
    if bench != "mlvu" and isinstance(options, list) and len(options) > 8:
        raise RecordError(f"{len(options)} options; at most 8 (A-H)")
    question = field_of(row, "question", str)
    if bench == "videomme":
        options = [str(o) for o in field_of(row, "options", list)]
        return {
            "qid": str(field_of(row, "question_id")),
            "task": str(row.get("task_type") or "videomme"),
            "category": str(field_of(row, "duration")),
            "video": video,
            "question": question,
            "options": options,
            "gt": field_of(row, "answer", str),
        }
    if bench == "egoschema":
        return {
            "qid": str(field_of(row, "question_idx")),
            "task": "egoschema",
            "category": "Subset",
            "video": video,
            "question": question,
            "options": [str(o) for o in field_of(row, "option", list)],
            "gt": str(field_of(row, "answer")),
        }
    task = field_of(row, "task_type", str)
    if task not in MLVU_TYPES:
        raise RecordError(f"unknown task_type '{task}'")
    candidates = [str(c) for c in field_of(row, "candidates", list)]
    return {
        "qid": str(row.get("question_id", n)),
        "task": task,
        "category": task,
        "video": video,
        "question": question,
        "options": candidates,
        "gt": field_of(row, "answer", str),
    }


def _query(bench: str, item: dict[str, Any], order: int, opts: LoadOptions) -> Query:
    p = opts.prompts
    if bench == "mlvu":  # the question already lists the lettered options
        prompt, kind = p.fill("mlvu", "mc", question=item["question"]), "mcq_extract"
    else:
        lines = "\n".join(
            p.fill(bench, "option", text=o, letter="ABCDEFGH"[i]) for i, o in enumerate(item["options"])
        )
        prompt = p.fill(bench, "mc", question=item["question"], options=lines)
        kind = "mcq_extract" if bench == "videomme" else "mmmu_parse"
    return Query(
        bench=bench,
        task=item["task"],
        category=item["category"],
        qid=item["qid"],
        video=item["video"],
        window=(0.0, float("inf")),
        prompt=prompt,
        score_kind=kind,
        gt=item["gt"],
        order=order,
        options=tuple(item["options"]),
    )


def _load_rekv(bench: str, path: Path, opts: LoadOptions) -> Loaded:
    """ReKV JSON: ``answer`` is the option text (MLVU style) or the letter (VideoMME style)."""
    videos = read_json(path)
    if not isinstance(videos, list):
        raise TokenCompressError(f"{path}: a ReKV annotation is a list of videos")
    skips = Skips(opts.strict, path.name)
    items = []
    for v, entry in enumerate(videos):
        try:
            rel = field_of(entry, "video_path", str)
            video = os.path.abspath(inside([path.parent], path.parent, rel, RecordError))
            convs = field_of(entry, "conversations", list)
            vid = str(entry.get("video_id", v))
        except RecordError as err:
            skips.skip(f"video {v}", err)
            continue
        for c, conv in enumerate(convs):
            try:
                choices = [str(x) for x in field_of(conv, "choices", list)]
                if len(choices) > 8:
                    raise RecordError(f"{len(choices)} choices; at most 8 (A-H)")
                answer = str(field_of(conv, "answer"))
                if answer in choices:
                    gt = "ABCDEFGH"[choices.index(answer)]
                elif len(answer) == 1 and answer in "ABCDEFGH"[: len(choices)]:
                    gt = answer
                else:
                    raise RecordError(f"answer '{answer[:40]}' is neither a choice nor its letter")
                task = str(conv.get("question_type") or conv.get("task_type") or bench)
                items.append(
                    {
                        "qid": f"{vid}:{c}",
                        "task": task,
                        "video": video,
                        "question": field_of(conv, "question", str),
                        "choices": choices,
                        "gt": gt,
                    }
                )
            except RecordError as err:
                skips.skip(f"video {v} conversation {c}", err)
    durations = Durations()
    p = opts.prompts
    queries = []
    for item in keep(items, lambda r: r["task"], opts, {r["task"] for r in items}):
        durations(item["video"], item["qid"])
        lines = "\n".join(
            p.fill("rekv", "option", letter="ABCDEFGH"[i], text=c) for i, c in enumerate(item["choices"])
        )
        queries.append(
            Query(
                bench=bench,
                task=item["task"],
                category=item["task"],
                qid=item["qid"],
                video=item["video"],
                window=(0.0, float("inf")),
                prompt=p.fill("rekv", "mc", question=item["question"], options=lines),
                score_kind="rekv_paren",
                gt=item["gt"],
                order=len(queries),
                options=tuple(item["choices"]),
                answer_prefix=p.get("rekv", "answer_prefix"),
            )
        )
    return Loaded(
        bench,
        queries,
        dict(skips.counts),
        f"ReKV JSON {path.name}",
        scoring_default="stc",
        skipped_ids=skips.ids,
    )
