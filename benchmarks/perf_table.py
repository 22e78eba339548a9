"""Regenerates the README's performance table: every ready pipeline against the baseline.

Each pipeline runs through ``tokencompress.bench.run_benchmark`` (baseline and pipeline
interleaved chunk by chunk, per-repeat ratios as median [min-max]) on the ``builtin-bench``
preset (SigLIP-so400m widths x 6 layers, Qwen2-0.5B widths x 8 layers, random weights) and the
same frames of ``bikes.mp4``. Results go to ``benchmarks/results/<pipeline>.json``, the machine
description to ``benchmarks/results/machine.json`` and the table to
``benchmarks/results/table.md``, which is what the README's Benchmarks section shows.

    PYTHONPATH=. python benchmarks/perf_table.py [--frames 16] [--repeats 5] [--only stc,tome]

Pipelines another part of the project adds (``rekv_stc``) get a row as soon as their YAML is
in ``pipelines/``; until then the row says so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
PIPELINES = ("tome", "visionzip", "vidcom2", "stc_pruner", "stc_cacher", "stc", "rekv_stc")
RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "threads_used": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": list(os.getloadavg()),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }


def spread_text(s: dict | None) -> str:
    if not s:
        return "–"
    return f"{s['median']:.3f} [{s['min']:.3f}–{s['max']:.3f}]"


def table(rows: list[dict], meta: dict) -> str:
    head = (
        "| pipeline | ViT time | ViT time, ref. chunks | ViT time, non-ref. chunks | ViT FLOPs | prefill time (whole stream) "
        "| prefill time (chunk median) | prefill FLOPs | token stages / prefill | end-to-end / chunk "
        "| LLM tokens | token cosine | first-token KL | load |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    lines.append("| baseline | 1 | – | – | 1 | 1 | 1 | 1 | – | 1 | 1 | 1 | 0 | |")
    for row in rows:
        if "missing" in row:
            lines.append(f"| `{row['name']}` | {row['missing']} |" + " |" * 12)
            continue
        s, r, f = row["spreads"], row["ratios"], row["fidelity"]
        share = s.get("stage_share_of_prefill")
        share_t = f"{100 * share['median']:.2f} %" if share else "–"
        cos = f.get("token_cosine_mean")
        kl = f.get("first_token_kl")
        load = row.get("load_average") or []
        lines.append(
            f"| `{row['name']}` | {spread_text(s.get('vit_ms'))} | {spread_text(s.get('vit_ms_reference'))} "
            f"| {spread_text(s.get('vit_ms_non_reference'))} "
            f"| {r['vit_gflops']:.3f} | {spread_text(s.get('prefill_ms'))} | {spread_text(s.get('prefill_ms_chunk_median'))} "
            f"| {r['prefill_gflops']:.3f} | {share_t} | {spread_text(s.get('e2e_ms_per_chunk'))} "
            f"| {r['llm_visual_tokens']:.3f} | {'–' if cos is None else f'{cos:.3f}'} | {'–' if kl is None else f'{kl:.2g}'} "
            f"| {'/'.join(f'{x:g}' for x in load)} |"
        )
    lines.append("")
    lines.append(
        f"Ratios pipeline / baseline, median [min–max] over {meta['repeats']} interleaved repeats; "
        f"{meta['frames']} frames of {meta['video']} at {meta['fps']:.3g} fps, one per chunk; model "
        f"`builtin-bench` ({meta['model']}); {meta['machine']['cpu']}, {meta['machine']['threads_used']} threads, "
        f"torch {meta['machine']['torch']}; load = 1-min load average before/after each row. "
        "Token cosine and first-token KL compare with the baseline's output: with random weights "
        "they are a proxy of how much a method perturbs the model, not of answer quality."
    )
    if meta.get("note"):
        lines.append("")
        lines.append(meta["note"])
    return "\n".join(lines) + "\n"


def _row(name: str, d: dict) -> dict:
    return {k: d[k] for k in ("spreads", "ratios", "fidelity", "load_average")} | {"name": name}


def rebuild(args: argparse.Namespace) -> int:
    """The table from committed results: rows in PIPELINES order, a 'not run' row where none is."""
    meta = json.loads((RESULTS / "machine.json").read_text()) if (RESULTS / "machine.json").exists() else {}
    rows = []
    for name in PIPELINES:
        path = RESULTS / f"{name}.json"
        if not path.exists():
            yaml = ROOT / "pipelines" / f"{name}.yaml"
            rows.append(
                {"name": name, "missing": "not run yet" if yaml.exists() else f"no pipelines/{name}.yaml yet"}
            )
            continue
        d = json.loads(path.read_text())
        rows.append(_row(name, d))
        meta.setdefault("machine", machine() | {"threads_used": d["threads"], "torch": d["torch_version"]})
        meta.update(
            model=d["model"], video=d["video"], fps=d["fps"], frames=d["frames"], repeats=d["repeats"]
        )
    if args.note:
        meta["note"] = args.note
    (RESULTS / "machine.json").write_text(json.dumps(meta, indent=2))
    text = table(rows, meta)
    (RESULTS / "table.md").write_text(text)
    write_readme(text)
    print(text)
    return 0


def write_readme(text: str) -> None:
    """Put ``text`` between the README's perf-table markers (nothing else of the README changes)."""
    readme = ROOT / "README.md"
    start, end = "<!-- perf-table:start -->\n", "<!-- perf-table:end -->"
    s = readme.read_text()
    if start in s and end in s:
        i, j = s.index(start) + len(start), s.index(end)
        readme.write_text(s[:i] + text + s[j:])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=0, help="the untimed counting pass already warms up")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", help="comma-separated subset of pipelines")
    ap.add_argument("--note", help="a line to print under the table (e.g. why a run was reduced)")
    ap.add_argument(
        "--from-results", action="store_true", help="rebuild table.md from the JSON in benchmarks/results/"
    )
    args = ap.parse_args()
    if args.from_results:
        return rebuild(args)
    torch.set_num_threads(args.threads)

    from tokencompress.bench import DEFAULT_QUESTION, run_benchmark, sample_frames
    from tokencompress.models import load_model
    from tokencompress.pipeline import Pipeline
    from tokencompress.video import sample_video_path

    names = args.only.split(",") if args.only else list(PIPELINES)
    loaded = load_model("builtin-bench")
    video = sample_video_path("bikes.mp4")
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": machine(),
        "model": loaded.description,
        "video": video.name,
        "frames": args.frames,
        "repeats": args.repeats,
        "note": args.note,
    }
    rows = []
    for name in names:
        path = ROOT / "pipelines" / f"{name}.yaml"
        if not path.exists():
            rows.append({"name": name, "missing": f"no pipelines/{name}.yaml yet"})
            continue
        pipe = Pipeline.from_yaml(path)
        frames, fps, note = sample_frames(video, pipe.config.stream.fps, args.frames)
        meta["fps"] = fps
        meta["fps_note"] = note
        print(f"{name}: {len(frames)} frames at {fps:.3g} fps ({note or 'pipeline rate'})", file=sys.stderr)
        r = run_benchmark(pipe, loaded, frames, DEFAULT_QUESTION, repeats=args.repeats, warmup=args.warmup)
        if note:
            r.notes.append(note)
        d = {"video": video.name, "fps": fps, **r.as_dict()}
        (RESULTS / f"{name}.json").write_text(json.dumps(d, indent=2))
        rows.append(
            {
                "name": name,
                "spreads": r.spreads,
                "ratios": r.ratios,
                "fidelity": r.fidelity,
                "load_average": r.load_average,
            }
        )
        print(f"{name}: ViT {spread_text(r.spreads.get('vit_ms'))}, load {r.load_average}", file=sys.stderr)
    (RESULTS / "machine.json").write_text(json.dumps(meta, indent=2))
    text = table(rows, meta)
    (RESULTS / "table.md").write_text(text)
    write_readme(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
