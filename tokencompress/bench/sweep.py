"""A speed curve: the same benchmark at several values of one strategy parameter.

``bench --sweep update_token_ratio=0.1,0.25,0.5`` sets the parameter on every strategy of the
pipeline that has it, runs a full interleaved benchmark per value, and writes the per-repeat
ratios, FLOP ratios and fidelity per value as JSON and a plot (ratio against the value).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..api.errors import TokenCompressError
from ..files.outputs import write_with
from ..pipeline.pipeline import Pipeline
from .results import BenchResult

__all__ = ["parse_sweep", "sweep_pipelines", "sweep_payload", "write_sweep_plot"]


def parse_sweep(text: str) -> tuple[str, list[float | int]]:
    """``PARAM=v1,v2,...`` -> (param, values); ints stay ints."""
    name, sep, rest = text.partition("=")
    if not sep or not name.strip() or not rest.strip():
        raise TokenCompressError(f"--sweep must look like PARAM=v1,v2,..., got '{text}'")
    values: list[float | int] = []
    for raw in rest.split(","):
        raw = raw.strip()
        try:
            values.append(int(raw) if raw.lstrip("-").isdigit() else float(raw))
        except ValueError:
            raise TokenCompressError(f"--sweep {name}: '{raw}' is not a number") from None
    return name.strip(), values


def sweep_pipelines(pipeline: Pipeline, param: str, values: list[float | int]) -> list[Pipeline]:
    """One pipeline per value, with ``param`` set on every strategy that has it."""
    base = pipeline.config.to_dict()
    owners = [
        s for steps in pipeline.config.stages.values() for s in steps if param in type(s.params).model_fields
    ]
    if not owners:
        raise TokenCompressError(
            f"--sweep {param}: no strategy of pipeline '{pipeline.name}' has this parameter"
        )
    out = []
    for value in values:
        d = {**base, "name": f"{pipeline.name} {param}={value}"}
        d["stages"] = {
            st: [{**s, param: value} if _has(pipeline, st, i, param) else s for i, s in enumerate(steps)]
            for st, steps in base["stages"].items()
        }
        out.append(Pipeline.from_dict(d, pipeline.registry))
    return out


def _has(pipeline: Pipeline, stage: str, i: int, param: str) -> bool:
    steps = next(v for k, v in pipeline.config.stages.items() if k.value == stage)
    return param in type(steps[i].params).model_fields


def sweep_payload(param: str, values: list[float | int], results: list[BenchResult]) -> dict[str, Any]:
    points = []
    for value, r in zip(values, results, strict=True):
        points.append(
            {
                "value": value,
                "spreads": r.spreads,
                "ratios": r.ratios,
                "flop_ratios": r.flop_ratios,
                "fidelity": r.fidelity,
                "load_average": r.load_average,
            }
        )
    first = results[0]
    return {
        "param": param,
        "model": first.model,
        "frames": first.frames,
        "repeats": first.repeats,
        "points": points,
        "results": [r.as_dict() for r in results],
    }


def write_sweep_plot(
    payload: dict[str, Any], path_png: str | os.PathLike[str], flag: str = "output"
) -> Path | None:
    """Time ratios (median with min-max bars) and FLOP ratios against the swept value, written
    atomically (``flag`` names the option in an error)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    xs = [p["value"] for p in payload["points"]]
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for key, label in (
        ("vit_ms", "ViT time"),
        ("prefill_ms", "prefill time"),
        ("e2e_ms_per_chunk", "end-to-end"),
    ):
        s = [p["spreads"].get(key) for p in payload["points"]]
        if any(v is None for v in s):
            continue
        med = [v["median"] for v in s]
        err = [
            [m - v["min"] for m, v in zip(med, s, strict=True)],
            [v["max"] - m for m, v in zip(med, s, strict=True)],
        ]
        ax.errorbar(xs, med, yerr=err, marker="o", capsize=3, label=label)
    for key, label in (("vit_gflops", "ViT FLOPs"), ("prefill_gflops", "prefill FLOPs")):
        ys = [p["ratios"].get(key) for p in payload["points"]]
        if all(v is not None for v in ys):
            ax.plot(xs, ys, linestyle="--", marker=".", label=label)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel(payload["param"])
    ax.set_ylabel("pipeline / baseline")
    ax.set_title(f"speed curve, {payload['model'].split(' (')[0]}, {payload['frames']} frames", fontsize=10)
    ax.legend(fontsize=8)
    path = Path(path_png)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_with(path, lambda tmp: fig.savefig(tmp, dpi=120), flag)
