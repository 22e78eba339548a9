"""What a benchmark run produced: one :class:`VariantResult` per side and the :class:`BenchResult`
that holds both, their ratios and how they were measured. Plain data, JSON-ready."""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RATIOS", "BenchResult", "VariantResult"]

RATIOS: tuple[tuple[str, str], ...] = (
    ("vit_ms", "ViT time"),
    ("vit_gflops", "ViT GFLOPs"),
    ("prefill_ms", "prefill time"),
    ("prefill_gflops", "prefill GFLOPs"),
    ("e2e_ms_per_chunk", "end-to-end per chunk"),
    ("ttft_ms", "time to first token"),
    ("kv_tokens", "KV cache tokens"),
    ("kv_bytes", "KV cache bytes"),
    ("llm_visual_tokens", "LLM visual tokens"),
)
"""Every ratio the benchmark reports, in report order: (summary key, label)."""


@dataclass
class VariantResult:
    """One side of the comparison. Per-chunk times are medians over the measured repeats."""

    name: str
    config: dict[str, Any]
    chunks: list[dict[str, Any]]
    e2e_ms_runs: list[float]
    ttft_ms_runs: list[float]
    kv_tokens: int
    kv_visual_tokens: int
    kv_bytes: int
    tokens: dict[str, Any]
    peak_memory: dict[str, Any]
    flops_note: str | None = None

    @property
    def e2e_ms(self) -> float:
        return statistics.median(self.e2e_ms_runs)

    @property
    def ttft_ms(self) -> float:
        return statistics.median(self.ttft_ms_runs)

    def summary(self) -> dict[str, Any]:
        """Totals and per-chunk means; the ratios are taken between these."""
        n = len(self.chunks)

        def total(key: str) -> float:
            return float(sum(c[key] for c in self.chunks))

        out: dict[str, Any] = {
            "chunks": n,
            "frames": sum(c["frames"] for c in self.chunks),
            "vit_ms": total("vit_ms"),
            "compress_ms": total("compress_ms"),
            "prefill_ms": total("prefill_ms"),
            "chunk_total_ms": total("total_ms"),
            "e2e_ms": self.e2e_ms,
            "e2e_ms_per_chunk": self.e2e_ms / n,
            "ttft_ms": self.ttft_ms,
            "vit_gflops": total("vit_flops") / 1e9,
            "encode_gflops": total("encode_flops") / 1e9,
            "prefill_gflops": total("prefill_flops") / 1e9,
            "kv_tokens": self.kv_tokens,
            "kv_visual_tokens": self.kv_visual_tokens,
            "kv_bytes": self.kv_bytes,
            "vit_tokens": self.tokens["vit"],
            "llm_visual_tokens": self.tokens["llm_visual"],
        }
        for key in ("vit_ms", "prefill_ms", "vit_gflops", "prefill_gflops"):
            out[f"{key}_per_chunk"] = out[key] / n
        return out

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["e2e_ms"] = self.e2e_ms
        d["ttft_ms"] = self.ttft_ms
        d["summary"] = self.summary()
        return d


@dataclass
class BenchResult:
    """Both variants, their ratios and how they were measured."""

    pipeline_name: str
    model: str
    random_weights: bool | None
    frames: int
    frame_shape: list[int]
    frames_per_chunk: int
    repeats: int
    warmup: int
    device: str
    threads: int
    torch_version: str
    load_average: list[float] | None
    """1-minute load average before and after; above the threads used, others competed for the CPU."""
    baseline: VariantResult
    pipeline: VariantResult
    notes: list[str] = field(default_factory=list)

    @property
    def ratios(self) -> dict[str, float | None]:
        """pipeline / baseline for every key of :data:`RATIOS` (None where the baseline is 0)."""
        b, p = self.baseline.summary(), self.pipeline.summary()
        return {key: (p[key] / b[key] if b[key] else None) for key, _ in RATIOS}

    def as_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["baseline"] = self.baseline.as_dict()
        d["pipeline"] = self.pipeline.as_dict()
        d["notes"] = list(self.notes)
        d["ratios"] = self.ratios
        return d
