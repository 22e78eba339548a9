"""The results JSON, the paper-style Markdown table and the retention-vs-speed plot.

Speed figures are sums over the same queries for each variant (they ran on the same frames and
device, interleaved per video); a speed-up is baseline time / pipeline time, so > 1 is faster.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

__all__ = ["SPEED_KEYS", "format_table", "speed_summary", "write_plot"]

SPEED_KEYS = (
    ("vit_ms", "ViT"),
    ("prefill_ms", "prefill"),
    ("encode_ms", "encode"),
    ("ttft_ms", "first token"),
    ("e2e_ms", "end-to-end"),
)


def speed_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    totals = {k: sum(float(r["timings"].get(k, 0.0)) for r in records) for k, _ in SPEED_KEYS}
    tokens = [r["visual_tokens"] for r in records if r.get("visual_tokens") is not None]
    return {
        "ms": totals,
        "visual_tokens_per_query": (sum(tokens) / len(tokens)) if tokens else None,
        "frames_per_query": (sum(r["frames"]["count"] for r in records) / len(records)) if records else None,
        "errors": sum(1 for r in records if r.get("error")),
        "queries": len(records),
    }


def speed_ratios(base: dict[str, Any], pipe: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, _ in SPEED_KEYS:
        b, p = base["ms"][key], pipe["ms"][key]
        out[key] = {"ratio": (p / b) if b else None, "speedup": (b / p) if p else None}
    bt, pt = base["visual_tokens_per_query"], pipe["visual_tokens_per_query"]
    out["visual_tokens"] = {"ratio": (pt / bt) if bt and pt is not None else None}
    return out


def _f(x: Any, fmt: str = ".2f", suffix: str = "") -> str:
    return "–" if x is None else f"{x:{fmt}}{suffix}"


def format_table(results: dict[str, Any]) -> str:
    variants = results["variants"]
    base = variants[0]
    cats = list(base["scores"]["categories"])[:6]
    unit = "" if results["benchmark"] == "egoschema" and results["scoring"] == "official" else ""
    head = [
        "method",
        *cats,
        "total",
        "retention %",
        "Δ pts",
        "ViT ×",
        "prefill ×",
        "e2e ×",
        "visual tok/query",
    ]
    rows = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for v in variants:
        s = v["scores"]
        ret = v.get("retention", {}).get("total", {})
        sp = v.get("speed_ratios", {})
        cells = [v["name"]]
        cells += [_f(s["categories"].get(c, {}).get("score")) for c in cats]
        cells += [
            _f(
                s["total"],
                ".4f" if results["benchmark"] == "egoschema" and results["scoring"] == "official" else ".2f",
            )
            + unit
        ]
        if v is base:
            cells += ["100.0", "0.00", "1.00", "1.00", "1.00"]
        else:
            cells += [
                _f(ret.get("retention"), ".1f"),
                _f(ret.get("delta"), "+.2f"),
                _f(sp.get("vit_ms", {}).get("speedup")),
                _f(sp.get("prefill_ms", {}).get("speedup")),
                _f(sp.get("e2e_ms", {}).get("speedup")),
            ]
        cells += [_f(v["speed"]["visual_tokens_per_query"], ".0f")]
        rows.append("| " + " | ".join(cells) + " |")
    notes = [
        f"{results['benchmark']}, protocol {results['protocol']}, frames {results['frames']}, scoring {results['scoring']}, "
        f"{results['queries']} queries; speed-ups are baseline / pipeline time summed over the same queries.",
    ]
    if results.get("random_weights"):
        notes.append("Model has RANDOM weights: the answers, and so the scores, are noise.")
    return "\n".join(rows) + "\n\n" + "\n".join(notes) + "\n"


def write_plot(results: dict[str, Any], path: Path) -> bytes | None:
    """PNG bytes of retention against prefill and end-to-end speed-up, one point per pipeline."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for ax, (key, label) in zip(axes, (("prefill_ms", "prefill"), ("e2e_ms", "end-to-end")), strict=True):
        ax.scatter([1.0], [100.0], color="black", marker="s")
        ax.annotate("baseline", (1.0, 100.0), textcoords="offset points", xytext=(4, 4), fontsize=8)
        for v in results["variants"][1:]:
            x = v["speed_ratios"][key]["speedup"]
            y = v["retention"]["total"]["retention"]
            if x is None or y is None:
                continue
            ax.scatter([x], [y])
            ax.annotate(v["name"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.axhline(100.0, color="grey", lw=0.5)
        ax.set_xlabel(f"{label} speed-up (× baseline)")
        ax.set_ylabel("accuracy retention (%)")
        ax.set_title(f"{results['benchmark']} ({results['protocol']})", fontsize=9)
    if results.get("random_weights"):
        fig.suptitle("random-weight model: retention is noise", fontsize=8, color="red")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
