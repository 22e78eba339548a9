"""The bar chart of pipeline / baseline ratios (matplotlib is optional: ``tokencompress[bench]``)."""

from __future__ import annotations

import os
from pathlib import Path

from ..files.outputs import write_with
from .results import BenchResult

__all__ = ["write_plot"]


def write_plot(result: BenchResult, path_png: str | os.PathLike[str], flag: str = "output") -> Path | None:
    """Horizontal bars of pipeline / baseline (1.0 = baseline), time and FLOPs side by side per
    stage, written atomically (``flag`` names the option in an error). Returns None, without
    raising, when matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    r = result.ratios
    groups: list[tuple[str, list[tuple[str, float | None]]]] = [
        ("ViT", [("time", r["vit_ms"]), ("FLOPs", r["vit_gflops"])]),
        ("LLM prefill", [("time", r["prefill_ms"]), ("FLOPs", r["prefill_gflops"])]),
        ("end-to-end / chunk", [("time", r["e2e_ms_per_chunk"])]),
        ("first answer token", [("time", r["ttft_ms"])]),
        ("KV cache", [("tokens", r["kv_tokens"])]),
        ("LLM visual tokens", [("tokens", r["llm_visual_tokens"])]),
    ]
    colors = {"time": "#4C72B0", "FLOPs": "#DD8452", "tokens": "#55A868"}
    fig = Figure(figsize=(8, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    height = 0.38
    seen: set[str] = set()
    values = [v for _, bars in groups for _, v in bars if v is not None]
    right = max([1.0, *values]) * 1.18
    for g, (_, bars) in enumerate(groups):
        for j, (kind, value) in enumerate(bars):
            y = g + (j - (len(bars) - 1) / 2) * height
            if value is None:
                ax.text(0.02, y, "n/a", va="center", fontsize=8)
                continue
            ax.barh(y, value, height=height * 0.92, color=colors[kind], label=None if kind in seen else kind)
            seen.add(kind)
            ax.text(value + right * 0.01, y, f"{value:.2f}x", va="center", fontsize=8)
    ax.axvline(1.0, color="black", linestyle="--", linewidth=1, label="baseline = 1.0")
    ax.set_yticks(range(len(groups)), [name for name, _ in groups])
    ax.invert_yaxis()
    ax.set_xlim(0, right)
    ax.set_xlabel("pipeline / baseline (lower is cheaper)")
    fig.legend(loc="outside lower center", ncol=4, fontsize=8)
    model = result.model.split(" (")[0]
    ax.set_title(
        f"{result.pipeline_name} vs baseline\n{model}, {result.frames} frames, median of {result.repeats}",
        fontsize=10,
    )
    path = Path(path_png)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_with(path, lambda tmp: fig.savefig(tmp, dpi=120), flag)
