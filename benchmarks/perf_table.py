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
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Row:
    """One table row: a ready pipeline from ``pipelines/``, optionally with parameters changed."""

    name: str
    """Result file stem and ``--only`` name."""
    pipeline: str
    label: str
    params: dict = field(default_factory=dict)
    """Strategy parameters set on every strategy of the pipeline that has them."""


ROWS = (
    Row("tome", "tome", "`tome`"),
    Row("visionzip", "visionzip", "`visionzip`"),
    Row("vidcom2", "vidcom2", "`vidcom2`"),
    Row("stc_pruner", "stc_pruner", "`stc_pruner`"),
    Row("stc_cacher", "stc_cacher", "`stc_cacher` 0.25 / int 2"),
    Row(
        "stc_cacher_stock_ref",
        "stc_cacher",
        "`stc_cacher` 0.25 / int 2, `fast_reference: false`",
        {"fast_reference": False},
    ),
    Row(
        "stc_cacher_r010",
        "stc_cacher",
        "`stc_cacher` 0.10 / int 4",
        {"update_token_ratio": 0.1, "cache_interval": 4},
    ),
    Row("stc", "stc", "`stc`"),
    Row("rekv_stc", "rekv_stc", "`rekv_stc`"),
    Row("evs", "evs", "`evs`"),
    Row("dtd", "dtd", "`dtd`"),
    Row("dycoke", "dycoke_ttm", "`dycoke_ttm`"),
    Row("streamingtom", "streamingtom_ctr", "`streamingtom_ctr` (tower saliency)"),
    Row(
        "streamingtom_recompute",
        "streamingtom_ctr",
        "`streamingtom_ctr`, `saliency_source: recompute`",
        {"saliency_source": "recompute"},
    ),
    Row("fastv", "fastv", "`fastv` K 2 / R 0.5"),
    Row("pdrop", "pdrop", "`pdrop` layers 2/4/6 of 8"),
    Row("stc_fastv", "stc_fastv", "`stc_fastv`"),
)
PIPELINES = tuple(r.name for r in ROWS)
PREFILL_RUNS = (
    "pruner_prefill",
    "pruner_prefill_grouped",
    "pruner_prefill_packed",
    "pruner_prefill_packed_grouped",
)
"""``benchmarks/pruner_prefill.py --out results/<name>.json`` runs: defaults, ``--prefill-chunks 4``,
``--decoder-kernels packed``, both."""


def load_row(row: Row):
    """The row's pipeline with ``row.params`` set where a strategy has them."""
    from tokencompress.pipeline.pipeline import Pipeline

    pipe = Pipeline.from_yaml(ROOT / "pipelines" / f"{row.pipeline}.yaml")
    if not row.params:
        return pipe
    d = pipe.config.to_dict()
    fields = {
        stage.value: [type(s.params).model_fields for s in steps]
        for stage, steps in pipe.config.stages.items()
    }
    d["stages"] = {
        st: [
            {**s, **{k: v for k, v in row.params.items() if k in fields[st][i]}} for i, s in enumerate(steps)
        ]
        for st, steps in d["stages"].items()
    }
    d["name"] = row.name
    return Pipeline.from_dict(d, pipe.registry)


def machine() -> dict:
    """:func:`tokencompress.kernels.machine.describe` (ISA, oneDNN/MKL, cores, threads) plus the
    keys the table's caption reads and when and under what load the run started."""
    from tokencompress.kernels.machine import describe

    m = describe()
    return {
        **m,
        "cpus": m["logical_cores"],
        "threads_used": m["threads"],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": list(os.getloadavg()),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }


def spread_text(s: dict | None, digits: int = 3) -> str:
    if not s:
        return "–"
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}–{s['max']:.{digits}f}]"


def table(rows: list[dict], meta: dict) -> str:
    head = (
        "| pipeline | ViT time | ViT time, ref. chunks | ViT time, non-ref. chunks | ViT FLOPs | prefill time (whole stream) "
        "| prefill time (chunk median) | prefill FLOPs | token stages / prefill | end-to-end / chunk "
        "| LLM tokens | token cosine | first-token KL | load |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    lines.append("| baseline | 1 | – | – | 1 | 1 | 1 | 1 | – | 1 | 1 | 1 | 0 | |")
    labels = {r.name: r.label for r in ROWS}
    for row in rows:
        label = labels.get(row["name"], f"`{row['name']}`")
        if "missing" in row:
            lines.append(f"| {label} | {row['missing']} |" + " |" * 12)
            continue
        s, r, f = row["spreads"], row["ratios"], row["fidelity"]
        share = s.get("stage_share_of_prefill")
        share_t = f"{100 * share['median']:.2f} %" if share else "–"
        cos = f.get("token_cosine_mean")
        kl = f.get("first_token_kl")
        load = row.get("load_average") or []
        lines.append(
            f"| {label} | {spread_text(s.get('vit_ms'))} | {spread_text(s.get('vit_ms_reference'))} "
            f"| {spread_text(s.get('vit_ms_non_reference'))} "
            f"| {r['vit_gflops']:.3f} | {spread_text(s.get('prefill_ms'))} | {spread_text(s.get('prefill_ms_chunk_median'))} "
            f"| {r['prefill_gflops']:.3f} | {share_t} | {spread_text(s.get('e2e_ms_per_chunk'))} "
            f"| {r['llm_visual_tokens']:.3f} | {'–' if cos is None else f'{cos:.3f}'} | {'–' if kl is None else f'{kl:.2g}'} "
            f"| {'/'.join(f'{x:g}' for x in load)} |"
        )
    lines.append("")
    lines.append(
        f"Ratios pipeline / baseline, median [min–max] over {meta['repeats']} interleaved repeats; "
        f"{meta['frames']} frames of {meta['video']} at {meta['fps']:.3g} fps, one per chunk unless noted below; model "
        f"`builtin-bench` ({meta['model']}); {meta['machine']['cpu']}, {meta['machine']['threads_used']} threads, "
        f"torch CPU capability {meta['machine'].get('cpu_capability', 'not recorded')}, "
        f"torch {meta['machine']['torch']}; load = 1-min load average before/after each row. "
        "Token cosine and first-token KL compare with the baseline's output: with random weights "
        "they are a proxy of how much a method perturbs the model, not of answer quality."
    )
    for key in ("chunk_note", "fps_note", "runs_note", "note"):
        if meta.get(key):
            lines.append("")
            lines.append(meta[key])
    return "\n".join(lines) + "\n"


def _row(name: str, d: dict) -> dict:
    return {k: d[k] for k in ("spreads", "ratios", "fidelity", "load_average")} | {"name": name}


def rebuild(args: argparse.Namespace) -> int:
    """The tables from committed results: rows in ROWS order, a 'not run' row where none is."""
    meta = json.loads((RESULTS / "machine.json").read_text()) if (RESULTS / "machine.json").exists() else {}
    rows, runs, results, grouped = [], {}, {}, []
    for row in ROWS:
        path = RESULTS / f"{row.name}.json"
        if not path.exists():
            yaml = ROOT / "pipelines" / f"{row.pipeline}.yaml"
            rows.append(
                {
                    "name": row.name,
                    "missing": "not run yet" if yaml.exists() else f"no pipelines/{row.pipeline}.yaml yet",
                }
            )
            continue
        d = json.loads(path.read_text())
        results[row.name] = d
        rows.append(_row(row.name, d))
        runs[row.name] = (d["frames"], d["repeats"], round(d["fps"], 3))
        if d.get("frames_per_chunk", 1) != 1:
            grouped.append(f"{row.label}: {d['frames_per_chunk']} frames per chunk (its pipeline's setting)")
        meta.setdefault("machine", machine() | {"threads_used": d["threads"], "torch": d["torch_version"]})
        meta.update(
            model=d["model"], video=d["video"], fps=d["fps"], frames=d["frames"], repeats=d["repeats"]
        )
    if len(set(runs.values())) > 1:
        meta["runs_note"] = "Rows come from runs of different sizes: " + "; ".join(
            f"{n}: {f} frames at {fps:g} fps x {r} repeats" for n, (f, r, fps) in runs.items()
        )
    meta["chunk_note"] = "; ".join(grouped) or None
    if args.note:
        meta["note"] = args.note
    _write(RESULTS / "machine.json", json.dumps(meta, indent=2))
    prefill = [
        json.loads((RESULTS / f"{name}.json").read_text())
        for name in PREFILL_RUNS
        if (RESULTS / f"{name}.json").exists()
    ]
    text = table(rows, meta) + "\n" + targets_table(results, prefill)
    _write(RESULTS / "table.md", text)
    write_readme(text)
    print(text)
    return 0


def _target_line(
    figure: str, spread: dict | None, target: float, limit: float | None, percent: bool = False
) -> str:
    """One row of the targets table; ``percent`` shows shares (``spread`` as fractions) in %."""
    scale, unit = (100, " %") if percent else (1, "")
    if spread:
        scaled = {k: scale * spread[k] for k in ("median", "min", "max")}
        text = spread_text(scaled, 2 if percent else 3).replace(" [", f"{unit} [")
        met = "yes" if scaled["median"] <= target else "no"
    else:
        text, met = "not run", "–"
    lim = "–" if limit is None else (f"{limit:g} %" if percent else f"{limit:.3f}")
    return f"| {figure} | {text} | {lim} | ≤ {target:g}{unit} | {met} |"


def _setting(run: dict) -> str:
    """The stream settings a pruner_prefill run used, where they differ from the defaults."""
    parts = []
    if run.get("prefill_chunks", 1) > 1:
        parts.append(f"`prefill_chunks: {run['prefill_chunks']}`")
    if run.get("decoder_kernels", "stock") != "stock":
        parts.append(f"`decoder_kernels: {run['decoder_kernels']}`")
    return f", {' + '.join(parts)}" if parts else ""


def targets_table(results: dict, prefill: list[dict]) -> str:
    """The issue's figures against their targets, read off the same results (median [min–max])."""

    def sp(name: str, key: str) -> dict | None:
        return results.get(name, {}).get("spreads", {}).get(key)

    def flops(name: str, key: str) -> float | None:
        d = results.get(name, {})
        return (
            d.get("flop_ratios", {}).get(key)
            if key.startswith("vit_gflops_")
            else d.get("ratios", {}).get(key)
        )

    lines = [
        "| figure | measured | FLOP limit | target | met |",
        "|---|---|---|---|---|",
        _target_line(
            "Cacher 0.25 / int 2, ViT time",
            sp("stc_cacher", "vit_ms"),
            0.67,
            flops("stc_cacher", "vit_gflops"),
        ),
        _target_line(
            "same, non-reference chunks",
            sp("stc_cacher", "vit_ms_non_reference"),
            0.34,
            flops("stc_cacher", "vit_gflops_non_reference"),
        ),
        _target_line(
            "Cacher 0.10 / int 4, ViT time",
            sp("stc_cacher_r010", "vit_ms"),
            0.42,
            flops("stc_cacher_r010", "vit_gflops"),
        ),
        _target_line("reference chunks vs plain tower", sp("stc_cacher", "vit_ms_reference"), 1.01, 1.0),
        _target_line(
            "same, `fast_reference: false` (bit-identical layers)",
            sp("stc_cacher_stock_ref", "vit_ms_reference"),
            1.01,
            1.0,
        ),
    ]
    wanted = {"4": 0.37, "16": 0.32, "64": 0.235}
    for run in prefill:
        lengths = run.get("lengths", {})
        setting = _setting(run)
        for n, target in wanted.items():
            got = lengths.get(n)
            lines.append(
                _target_line(
                    f"Pruner 60/196 + prefill, {n} chunks{setting}",
                    None if got is None else got["pruner_plus_prefill_over_prefill"],
                    target,
                    None if got is None else got.get("flop_ratio"),
                )
            )
        for n in wanted:
            got = lengths.get(n)
            if got is not None:
                lines.append(
                    _target_line(
                        f"pruner time / pruned prefill, {n} chunks{setting}",
                        got["pruner_share_of_pruned_prefill"],
                        0.8,
                        0,
                        percent=True,
                    )
                )
    lines.append(
        _target_line(
            "pruner time / pruned prefill, `stc_pruner` row above",
            sp("stc_pruner", "stage_share_of_prefill"),
            0.8,
            0,
            percent=True,
        )
    )
    note = (
        "Cacher rows from the table above; pruner rows from `benchmarks/pruner_prefill.py` "
        "(the token stage and the prefill only, over one stream of one-frame chunks; the first 4, 16 and 64 "
        "chunks of the same streams)"
    )
    for run in prefill:
        note += (
            f"; {_setting(run).strip(' ,') or 'defaults'}: {run['repeats']} interleaved repeats, "
            f"{run['threads']} threads, load {run['load_average'][0]:g} → {run['load_average'][1]:g}"
        )
    return "\n".join(lines) + "\n\n" + note + ".\n"


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
    from tokencompress.media.video import sample_video_path
    from tokencompress.models.loading import load_model

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
    slow: dict[float, float] = {}
    """pipeline fps -> the faster rate its rows were sampled at (the clip is too short)"""
    by_name = {r.name: r for r in ROWS}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise SystemExit(f"--only: unknown rows {unknown}; known: {', '.join(by_name)}")
    for name in names:
        row = by_name[name]
        if not (ROOT / "pipelines" / f"{row.pipeline}.yaml").exists():
            print(f"{name}: no pipelines/{row.pipeline}.yaml, skipped", file=sys.stderr)
            continue
        pipe = load_row(row)
        frames, fps, note = sample_frames(video, pipe.config.stream.fps, args.frames)
        meta["fps"] = fps
        if note:
            slow.setdefault(pipe.config.stream.fps, fps)
        print(f"{name}: {len(frames)} frames at {fps:.3g} fps ({note or 'pipeline rate'})", file=sys.stderr)
        r = run_benchmark(
            pipe, loaded, frames, DEFAULT_QUESTION, repeats=args.repeats, warmup=args.warmup, progress=False
        )
        if note:
            r.notes.append(note)
        d = {"video": video.name, "fps": fps, "params": row.params, **r.as_dict()}
        _write(RESULTS / f"{name}.json", json.dumps(d, indent=2))
        print(f"{name}: ViT {spread_text(r.spreads.get('vit_ms'))}, load {r.load_average}", file=sys.stderr)
    if slow:
        rates = ", ".join(f"{r:g}" for r in sorted(slow))
        faster = ", ".join(sorted({f"{f:.3g}" for f in slow.values()}))
        meta["fps_note"] = (
            f"{video.name} is too short for {args.frames} frames at the pipelines' own {rates} fps: "
            f"those rows sample at {faster} fps instead"
        )
    _write(RESULTS / "machine.json", json.dumps(meta, indent=2))
    return rebuild(args)


def _write(path: Path, text: str) -> None:
    """Atomically: a run stopped half-way never leaves a truncated result file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
