"""The text report: one row per figure (baseline, pipeline, ratio) and the notes that say how
far the figures can be trusted."""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch import nn

from .results import BenchResult, VariantResult

__all__ = ["format_table", "notes_for"]

_TINY_CHUNK_MS = 50.0


def notes_for(
    baseline: VariantResult, compressed: VariantResult, model: nn.Module, load: list[float | None]
) -> list[str]:
    notes = [
        "times: per-chunk and first-token medians over repeats of chunk-interleaved runs (baseline and "
        "pipeline take turns chunk by chunk); end-to-end: torch.utils.benchmark Timer median of whole "
        "streams (all frames + a one-token answer), variants alternating",
        "FLOPs: torch.utils.flop_counter, full attention rectangle (no causal halving), "
        "norms/activations not counted; 'prefill' is the visual prefill only",
    ]
    mean_chunk = baseline.summary()["chunk_total_ms"] / max(1, len(baseline.chunks))
    if mean_chunk < _TINY_CHUNK_MS:
        notes.append(
            f"baseline chunks take {mean_chunk:.1f} ms: at this size Python overhead dominates and time "
            "ratios say little; use a medium model (builtin-medium) for latency claims"
        )
    before, after = load
    threads = torch.get_num_threads()
    if before is not None and after is not None and (before > 0.5 or after > threads + 0.5):
        notes.append(
            f"1-min load average {before:g} before / {after:g} after on {os.cpu_count()} CPUs ({threads} threads "
            "used here): other processes competed, so time ratios are noisier than usual"
        )
    for v in (baseline, compressed):
        if v.flops_note:
            notes.append(f"{v.name}: {v.flops_note}")
    if any(p.device.type == "cuda" for p in model.parameters()):
        notes.append("CUDA: per-chunk times are host-side and unsynchronised; trust the end-to-end figure")
    return notes


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if value == 0:
            return "0"
        digits = max(0, 3 - int(math.floor(math.log10(abs(value)))) - 1)
        return f"{value:,.{min(digits, 4)}f}{unit}"
    return f"{value:,}{unit}"


def format_table(result: BenchResult) -> str:
    """Metric, baseline, pipeline and ratio, one row per figure."""
    b, p, ratios = result.baseline.summary(), result.pipeline.summary(), result.ratios
    rows: list[tuple[str, Any, Any, float | None]] = [
        ("ViT ms / chunk", b["vit_ms_per_chunk"], p["vit_ms_per_chunk"], ratios["vit_ms"]),
        ("ViT GFLOPs / chunk", b["vit_gflops_per_chunk"], p["vit_gflops_per_chunk"], ratios["vit_gflops"]),
        ("prefill ms / chunk", b["prefill_ms_per_chunk"], p["prefill_ms_per_chunk"], ratios["prefill_ms"]),
        (
            "prefill GFLOPs / chunk",
            b["prefill_gflops_per_chunk"],
            p["prefill_gflops_per_chunk"],
            ratios["prefill_gflops"],
        ),
        ("end-to-end ms / chunk", b["e2e_ms_per_chunk"], p["e2e_ms_per_chunk"], ratios["e2e_ms_per_chunk"]),
        ("time to first token ms", b["ttft_ms"], p["ttft_ms"], ratios["ttft_ms"]),
        ("KV cache tokens", b["kv_tokens"], p["kv_tokens"], ratios["kv_tokens"]),
        ("KV cache MB", b["kv_bytes"] / 1e6, p["kv_bytes"] / 1e6, ratios["kv_bytes"]),
        ("LLM visual tokens", b["llm_visual_tokens"], p["llm_visual_tokens"], ratios["llm_visual_tokens"]),
        ("ViT tokens", b["vit_tokens"], p["vit_tokens"], None),
    ]
    mb, mp = result.baseline.peak_memory, result.pipeline.peak_memory
    if mb.get("bytes") is not None and mp.get("bytes") is not None:
        approx = " (approx.)" if mb.get("approximate") or mp.get("approximate") else ""
        rows.append((f"peak extra memory MB{approx}", mb["bytes"] / 1e6, mp["bytes"] / 1e6, None))
    name = result.pipeline_name
    width = max(len(name), 9)
    head = f"{'metric':<30} {'baseline':>12} {name:>{width}} {'ratio':>7}"
    lines = [head, "-" * len(head)]
    for label, bv, pv, ratio in rows:
        lines.append(f"{label:<30} {_fmt(bv):>12} {_fmt(pv):>{width}} {_fmt_ratio(ratio):>7}")
    lines.append(
        f"{result.frames} frames {'x'.join(map(str, result.frame_shape))}, {result.baseline.summary()['chunks']} chunks "
        f"of {result.frames_per_chunk}; median of {result.repeats} after {result.warmup} warm-up; "
        f"{result.device}, {result.threads} threads, torch {result.torch_version}"
    )
    lines.extend(f"note: {n}" for n in result.notes)
    return "\n".join(lines)


def _fmt_ratio(ratio: float | None) -> str:
    return "" if ratio is None else f"{ratio:.3f}"
