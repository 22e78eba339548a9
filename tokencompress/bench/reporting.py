"""The text report: one row per figure (baseline, pipeline, ratio) and the notes that say how
far the figures can be trusted."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..kernels.calibration import Calibration
from .results import BenchResult, VariantResult

__all__ = ["calibration_notes", "format_table", "machine_line", "notes_for"]

_TINY_CHUNK_MS = 50.0


def notes_for(
    baseline: VariantResult, compressed: VariantResult, model: nn.Module, load: list[float | None]
) -> list[str]:
    notes = [
        "times: chunk-interleaved runs (baseline and pipeline take turns chunk by chunk); 'per repeat' "
        "figures are one ratio per repeat (medians over the chunks of each kind inside it), given as "
        "median [min-max] over repeats; end-to-end = a repeat's chunks plus its one-token answer",
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
    if before is not None and after is not None:
        busy = before > threads + 0.5 or after > threads + 0.5
        notes.append(
            f"load: 1-min load average {before:g} before / {after:g} after on {os.cpu_count()} CPUs, "
            f"{threads} threads used"
            + ("; other processes competed, so time ratios are noisier than usual" if busy else "")
        )
    for v in (baseline, compressed):
        if v.flops_note:
            notes.append(f"{v.name}: {v.flops_note}")
    if any(p.device.type == "cuda" for p in model.parameters()):
        notes.append("CUDA: per-chunk times are read after a device synchronise (timing.now)")
    return notes


def machine_line(m: dict[str, Any]) -> str:
    """One line naming the machine kind the figures hold for (:func:`~..kernels.machine.describe`):
    the same pipeline's ratios differ between AVX-512 and AVX2 CPUs, so a table never goes without it."""
    emulated = (
        f" (limited by {', '.join(f'{k}={v}' for k, v in m['isa_env'].items())})" if m.get("isa_env") else ""
    )
    libs = f"oneDNN {'yes' if m.get('mkldnn') else 'no'}, MKL {'yes' if m.get('mkl') else 'no'}"
    gpu = f", GPU {m['cuda_device']}" if m.get("cuda_device") else ""
    return (
        f"machine: torch CPU capability {m.get('cpu_capability')}{emulated}; {libs}; "
        f"{m.get('cpu')}, {m.get('logical_cores')} logical cores, {m.get('threads')} threads{gpu}"
    )


def calibration_notes(strategies: Iterable[Any]) -> list[str]:
    """What each strategy's fast-path calibration (:mod:`~..kernels.calibration`, e.g. STC-Cacher's
    ``fast_reference: auto``) chose on this machine, from its ``calibration`` attribute: the
    figures hold for that choice, and a reader on another CPU may get the other one."""
    notes = []
    for s in strategies:
        cal = getattr(s, "calibration", None)
        for key, c in cal.choices.items() if isinstance(cal, Calibration) else ():
            notes.append(
                f"{s.name}: calibrated {key[0]} at {key[1]}: {'fast path' if c.fast else 'stock path'} "
                f"(fast/stock {c.ratio:.3f}, median of {cal.calls} paired calls; calibration "
                f"{1e3 * c.cost_s:.0f} ms, paid once per shape, in the first run after the FLOP count)"
            )
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
        f"of {result.frames_per_chunk}"
        + (f", prefilled {result.prefill_chunks} at a time" if result.prefill_chunks > 1 else "")
        + f"; median of {result.repeats} after {result.warmup} warm-up; "
        f"{result.device}, {result.threads} threads, torch {result.torch_version}"
    )
    if result.machine:
        lines.append(machine_line(result.machine))
    lines.extend(_spread_lines(result, len(head)))
    lines.extend(f"note: {n}" for n in result.notes)
    return "\n".join(lines)


SPREAD_ROWS: tuple[tuple[str, str], ...] = (
    ("vit_ms", "ViT time, whole stream"),
    ("vit_ms_reference", "ViT time, reference chunks"),
    ("vit_ms_non_reference", "ViT time, non-reference chunks"),
    ("prefill_ms", "visual prefill, whole stream"),
    ("prefill_ms_chunk_median", "visual prefill, per-chunk median"),
    ("prefill_with_stage_ms", "token stages + prefill, whole stream"),
    ("stage_share_of_prefill", "token stages / own prefill"),
    ("kv_share_of_prefill", "kv_cache work between prefills / prefill"),
    ("e2e_ms_per_chunk", "end-to-end per chunk"),
    ("ttft_ms", "time to first token"),
)
"""Per-repeat figures of the report, in order: (spread key, label)."""


def fmt_spread(s: dict[str, Any] | None, percent: bool = False) -> str:
    if not s:
        return "n/a"
    if percent:
        return f"{100 * s['median']:.2f} % [{100 * s['min']:.2f}-{100 * s['max']:.2f}]"
    return f"{s['median']:.3f} [{s['min']:.3f}-{s['max']:.3f}]"


def _spread_lines(result: BenchResult, width: int) -> list[str]:
    lines = ["", f"{'per repeat (pipeline / baseline)':<40} {'median [min-max]':>26}", "-" * width]
    for key, label in SPREAD_ROWS:
        s = result.spreads.get(key)
        if key == "prefill_ms_chunk_median" and result.prefill_chunks > 1:
            label = f"visual prefill, median per {result.prefill_chunks}-chunk group"
        if s is not None:
            lines.append(f"{label:<40} {fmt_spread(s, percent=key.endswith('_share_of_prefill')):>26}")
    for key, value in result.flop_ratios.items():
        lines.append(
            f"{'ViT GFLOPs, ' + key.removeprefix('vit_gflops_').replace('_', '-') + ' chunks':<40} {value:>26.3f}"
        )
    over = result.stage_overhead.get("vit_time_over_flop_line")
    if over is not None:
        lines.append(f"{'ViT time above its FLOP line':<40} {100 * over:>24.1f} %")
    fid = result.fidelity
    if fid:
        cos, kl = fid.get("token_cosine_mean"), fid.get("first_token_kl")
        lines.append(
            f"fidelity: visual-token cosine to baseline {_fmt(cos) if cos is not None else 'n/a'}"
            f" (min {_fmt(fid.get('token_cosine_min'))}; {', '.join(fid.get('token_cosine_matched') or []) or 'no match'}),"
            f" first-token KL {_fmt(kl) if kl is not None else 'n/a'}; {fid.get('proxy_note')}"
        )
    return lines


def _fmt_ratio(ratio: float | None) -> str:
    return "" if ratio is None else f"{ratio:.3f}"
