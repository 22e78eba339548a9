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
    runs: list[dict[str, Any]] = field(default_factory=list)
    """Per measured repeat: ``chunks`` (per-chunk ms), ``first_token_ms``, ``answer_ms``."""
    chunk_kinds: list[str] = field(default_factory=list)
    """Per chunk: ``reference`` / ``non_reference`` (STC-Cacher) or ``all``."""

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
    """Both variants, their ratios and how they were measured.

    ``ratios`` are taken between the variants' summaries (per-chunk medians over repeats);
    ``spreads`` are the per-repeat ratios as median [min-max] (:mod:`.spreads`), the figures to
    quote; ``fidelity`` compares the pipeline's output with the baseline's (:mod:`.fidelity`).
    """

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
    spreads: dict[str, Any] = field(default_factory=dict)
    fidelity: dict[str, Any] = field(default_factory=dict)
    kv_cache: dict[str, float] | None = None
    """Retrieval overhead per question when the pipeline has a retrieving kv_cache strategy."""
    prefill_chunks: int = 1
    """``stream.prefill_chunks`` both variants ran with (chunks whose tokens share one prefill)."""
    machine: dict[str, Any] = field(default_factory=dict)
    """:func:`tokencompress.kernels.machine.describe`: the ISA torch dispatched on, oneDNN/MKL,
    cores and threads; the ratios hold for this machine kind only."""

    @property
    def ratios(self) -> dict[str, float | None]:
        """pipeline / baseline for every key of :data:`RATIOS` (None where the baseline is 0)."""
        b, p = self.baseline.summary(), self.pipeline.summary()
        return {key: (p[key] / b[key] if b[key] else None) for key, _ in RATIOS}

    @property
    def flop_ratios(self) -> dict[str, float | None]:
        """FLOP ratios per chunk kind (deterministic): ViT over all, reference and non-reference chunks."""
        kinds = self.pipeline.chunk_kinds or ["all"] * len(self.pipeline.chunks)
        out: dict[str, float | None] = {}
        for kind in sorted(set(kinds) - {"all"}):
            ix = [i for i, k in enumerate(kinds) if k == kind]
            b = sum(self.baseline.chunks[i]["vit_flops"] for i in ix)
            out[f"vit_gflops_{kind}"] = (
                sum(self.pipeline.chunks[i]["vit_flops"] for i in ix) / b if b else None
            )
        return out

    @property
    def stage_overhead(self) -> dict[str, Any]:
        """What the strategies' own work costs, as a share of the stage it serves.

        Token stages (post_vit, pre_prefill): their time over the pipeline's prefill time; the kv_cache
        strategy's work between prefills (a compression such as InfiniPot-V's) likewise. Strategies
        inside the ViT (pre_vit_block): the ViT time ratio over the ViT FLOP ratio, minus one (the
        time spent above the FLOP line, as a share of the ideal).
        """
        r, s = self.ratios, self.spreads
        share, kv = s.get("stage_share_of_prefill"), s.get("kv_share_of_prefill")
        vit_t, vit_f = (s.get("vit_ms") or {}).get("median"), r.get("vit_gflops")
        return {
            "token_stages_share_of_prefill": share["median"] if share else None,
            "kv_cache_share_of_prefill": kv["median"] if kv else None,
            "vit_time_over_flop_line": (vit_t / vit_f - 1) if vit_t and vit_f else None,
        }

    def as_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["baseline"] = self.baseline.as_dict()
        d["pipeline"] = self.pipeline.as_dict()
        d["notes"] = list(self.notes)
        d["ratios"] = self.ratios
        d["flop_ratios"] = self.flop_ratios
        d["stage_overhead"] = self.stage_overhead
        return d
