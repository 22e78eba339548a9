"""Compare a pipeline with the uncompressed baseline in one run, on the same frames and model.

A compression method is only worth what it saves relative to running without it, and on a
shared CPU the absolute numbers drift by 2-5x between minutes (specs/targets.md §5). So both
variants are measured in the same process, on the same decoded frames and the same weights,
and the repeats alternate between them so drift lands on both alike. Everything is reported
as a ratio pipeline / baseline (DESIGN §9).

Time comes from the stream's own per-chunk figures and from ``torch.utils.benchmark.Timer``
for the whole stream; FLOPs come from ``torch.utils.flop_counter`` in a separate untimed
pass, because counting runs every op through Python and would swamp the timings. FLOPs are
deterministic and are what tests may assert on; wall time never is.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from .errors import TokenCompressError
from .kv_stats import kv_cache_note, retrieval_overhead
from .models import LoadedModel
from .pipeline import BoundPipeline, Pipeline
from .session import ChunkStats, Stream

__all__ = [
    "BenchResult",
    "DEFAULT_QUESTION",
    "RATIOS",
    "VariantResult",
    "format_table",
    "run_benchmark",
    "sample_frames",
    "write_plot",
]

DEFAULT_QUESTION = "What is happening in the video?"

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

_TINY_CHUNK_MS = 50.0


def _cpu_sdpa_flops(
    query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any
) -> int:
    """torch's counter has formulas for the CUDA attention kernels only; on CPU, SDPA lowers to
    this op and would count as zero, losing the 2·T²·C attention term of every layer."""
    return sdpa_flop_count(query, key, value)


_CUSTOM_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


# ------------------------------------------------------------------ results
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
    kv_cache: dict[str, float] | None = None
    """Retrieval overhead per question when the pipeline has a retrieving kv_cache strategy."""

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


# ------------------------------------------------------------------ running
def run_benchmark(
    pipeline: Pipeline,
    loaded_model: LoadedModel | nn.Module,
    frames: np.ndarray,
    question_ids_or_text: str | Tensor | Sequence[int] = DEFAULT_QUESTION,
    repeats: int = 3,
    warmup: int = 1,
    progress: bool = True,
) -> BenchResult:
    """Measure ``pipeline`` against the same config without stages on ``frames`` ``[N, H, W, 3]``.

    Three kinds of run, each a fresh stream over all frames followed by a one-token answer:

    * one untimed FLOP-counting pass per variant (also tokens per stage, KV size, peak memory);
    * ``warmup`` + ``repeats`` chunk-interleaved runs: both variants' streams advance in lock
      step (baseline chunk 0, pipeline chunk 0, baseline chunk 1, ...), so the load swings of
      a shared machine, which last seconds, land on both alike. Per-chunk times and time to
      first token are the medians over the ``repeats`` of these;
    * ``repeats`` whole-stream runs per variant under ``torch.utils.benchmark.Timer``,
      alternating the variants, for the end-to-end figure.
    """
    from tqdm import tqdm

    if repeats < 1:
        raise TokenCompressError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise TokenCompressError(f"warmup must be >= 0, got {warmup}")
    model, tokenizer, description, random_weights = _unpack(loaded_model)
    frames = _check_frames(frames)
    question = _question(question_ids_or_text, tokenizer)
    load_before = _load_average()
    base_cfg = dataclasses.replace(pipeline.config, name="baseline", stages={})
    runners = [
        _Runner("baseline", Pipeline(base_cfg, pipeline.registry).bind(model), tokenizer, frames, question),
        _Runner(pipeline.name, pipeline.bind(model), tokenizer, frames, question),
    ]
    # Per variant: FLOP pass, interleaved warm-ups and repeats, then per repeat the Timer's
    # probe run plus the measured one.
    total = len(runners) * (1 + warmup + 3 * repeats)
    with tqdm(
        total=total, unit="run", desc="bench", disable=not progress, file=sys.stderr, leave=False
    ) as bar:
        for r in runners:
            r.bar = bar
            bar.set_postfix_str(f"{r.label}: counting FLOPs")
            r.count()
        for i in range(warmup + repeats):
            what = "warm-up" if i < warmup else f"repeat {i - warmup + 1}/{repeats}"
            bar.set_postfix_str(f"interleaved {what}")
            # Alternate who goes first, so neither always runs on the caches the other left.
            _interleaved(runners if i % 2 == 0 else runners[::-1], keep=i >= warmup)
        for i in range(repeats):
            for r in runners if i % 2 == 0 else runners[::-1]:
                bar.set_postfix_str(f"{r.label}: whole stream {i + 1}/{repeats}")
                r.measure()
    load = [load_before, _load_average()]
    baseline, compressed = (r.result() for r in runners)
    notes = _notes(baseline, compressed, model, load)
    kv_cache = retrieval_overhead(runners[1].answers)
    if kv_cache is not None:
        notes.append(kv_cache_note(kv_cache))
    target = runners[1].bound.target
    return BenchResult(
        pipeline_name=pipeline.name,
        model=description,
        random_weights=random_weights,
        frames=int(frames.shape[0]),
        frame_shape=[int(s) for s in frames.shape[1:]],
        frames_per_chunk=pipeline.config.stream.frames_per_chunk,
        repeats=repeats,
        warmup=warmup,
        device=str(target.device),
        threads=torch.get_num_threads(),
        torch_version=torch.__version__,
        load_average=None if None in load else load,
        baseline=baseline,
        pipeline=compressed,
        notes=notes,
        kv_cache=kv_cache,
    )


def _interleaved(runners: Sequence[_Runner], keep: bool) -> None:
    """One run of every variant, chunk by chunk in turn; each variant's patch is on only for its own
    calls, so the other runs on the stock model in between."""
    streams = [r.bound.stream(tokenizer=r.tokenizer) for r in runners]
    frames = runners[0].frames
    step = runners[0].bound.config.stream.frames_per_chunk
    for start in range(0, len(frames), step):
        for r, stream in zip(runners, streams, strict=True):
            with r.bound.hooks():
                stream.add_frames(frames[start : start + step])
    for r, stream in zip(runners, streams, strict=True):
        with r.bound.hooks():
            stream.flush()  # a short last chunk stays pending until flushed
            answer = stream.ask(r.question, max_new_tokens=1)
        if keep:
            r.measured.append((list(stream.history), answer.first_token_ms))
            r.answers.append(answer)
        if r.bar is not None:
            r.bar.update(1)


class _Runner:
    """Streams one variant, and keeps what its runs produced."""

    def __init__(
        self, label: str, bound: BoundPipeline, tokenizer: Any, frames: np.ndarray, question: Any
    ) -> None:
        from torch.utils.benchmark import Timer

        self.label = label
        self.bound = bound
        self.tokenizer = tokenizer
        self.frames = frames
        self.question = question
        self.bar: Any = None
        self.measured: list[tuple[list[ChunkStats], float]] = []
        self.answers: list[Any] = []
        self.measurements: list[Any] = []
        self.flops: list[dict[str, int]] = []
        self.counted: dict[str, Any] = {}
        # Timer defaults to one thread; the stream must run as it would in use.
        self.timer = Timer(
            stmt="run()",
            globals={"run": self.run},
            num_threads=torch.get_num_threads(),
            label="tokencompress bench",
            sub_label=label,
            description="whole stream + first answer token",
        )

    def _stream(self) -> Stream:
        stream = self.bound.stream(tokenizer=self.tokenizer)
        stream.add_frames(self.frames)
        stream.flush()
        return stream

    def run(self) -> None:
        """The statement the Timer times: a whole stream and a one-token answer."""
        # The patch goes on per run so the other variant can run in between on the same model.
        with self.bound.hooks():
            self._stream().ask(self.question, max_new_tokens=1)
        if self.bar is not None:
            self.bar.update(1)

    def measure(self) -> None:
        """One measured whole stream, preceded by the Timer's block-size probe, which runs the
        stream once untimed: so a measured run never pays for switching from the other variant."""
        self.measurements.append(self.timer.blocked_autorange(min_run_time=0.0))

    def count(self) -> None:
        """Untimed pass: FLOPs per chunk (ViT, whole vision path, visual prefill), token counts per
        stage, KV-cache size and peak memory."""
        target = self.bound.target
        tower = _vision_module(target)
        tower_key = type(tower).__name__ if tower is not None else None
        encode, prefill_visual = target.encode, target.prefill_visual
        flops = self.flops
        missing_tower: list[bool] = []

        def counted_encode(*args: Any, **kwargs: Any) -> Any:
            with FlopCounterMode(display=False, custom_mapping=_CUSTOM_FLOPS) as fc:
                out = encode(*args, **kwargs)
            by_module = fc.get_flop_counts()
            total = fc.get_total_flops()
            if tower_key in by_module:
                vit = sum(by_module[tower_key].values())
            else:
                missing_tower.append(True)
                vit = total
            flops.append({"vit_flops": int(vit), "encode_flops": int(total), "prefill_flops": 0})
            return out

        def counted_prefill(*args: Any, **kwargs: Any) -> Any:
            with FlopCounterMode(display=False, custom_mapping=_CUSTOM_FLOPS) as fc:
                out = prefill_visual(*args, **kwargs)
            flops[-1]["prefill_flops"] = int(fc.get_total_flops())
            return out

        # Instance attributes shadow the methods on this bound target only, and only for this pass.
        target.encode = counted_encode  # type: ignore[method-assign]
        target.prefill_visual = counted_prefill  # type: ignore[method-assign]
        try:
            with _peak_memory(target.device) as memory, self.bound.hooks():
                stream = self._stream()
        finally:
            del target.encode, target.prefill_visual
        history = stream.history
        self.counted = {
            "history": history,
            "kv_tokens": stream.llm.length,
            "kv_visual_tokens": stream.llm.visual_tokens,
            "kv_bytes": _kv_bytes(stream.llm.cache),
            "peak_memory": memory,
            "flops_note": (
                f"ViT FLOPs include the projector and pooling: no '{tower_key}' module was seen"
                if missing_tower
                else None
            ),
        }
        if self.bar is not None:
            self.bar.update(1)

    def result(self) -> VariantResult:
        history: list[ChunkStats] = self.counted["history"]
        chunks = []
        for i, c in enumerate(history):
            per_run = [run[0][i] for run in self.measured]
            row: dict[str, Any] = {
                "chunk": c.chunk,
                "first_frame": c.first_frame,
                "frames": c.frames,
                "vit_tokens": c.vit_tokens,
                "post_vit": list(c.post_vit),
                "pre_prefill": list(c.pre_prefill),
                "cache_tokens": c.cache_tokens,
            }
            for key in ("preprocess_ms", "vit_ms", "compress_ms", "prefill_ms", "total_ms"):
                row[key] = statistics.median(getattr(s, key) for s in per_run)
            row.update(self.flops[i])
            chunks.append(row)
        tokens = {
            "vit": sum(c.vit_tokens for c in history),
            "post_vit": [sum(c.post_vit[0] for c in history), sum(c.post_vit[1] for c in history)],
            "pre_prefill": [sum(c.pre_prefill[0] for c in history), sum(c.pre_prefill[1] for c in history)],
            "llm_visual": sum(c.llm_tokens for c in history),
        }
        e2e = [1e3 * t for m in self.measurements for t in m.times]
        return VariantResult(
            name=self.label,
            config=self.bound.config.to_dict(),
            chunks=chunks,
            e2e_ms_runs=e2e,
            ttft_ms_runs=[run[1] for run in self.measured],
            kv_tokens=self.counted["kv_tokens"],
            kv_visual_tokens=self.counted["kv_visual_tokens"],
            kv_bytes=self.counted["kv_bytes"],
            tokens=tokens,
            peak_memory=self.counted["peak_memory"],
            flops_note=self.counted["flops_note"],
        )


# ------------------------------------------------------------------ helpers
def _unpack(loaded: LoadedModel | nn.Module) -> tuple[nn.Module, Any, str, bool | None]:
    if isinstance(loaded, LoadedModel):
        return loaded.model, loaded.tokenizer, loaded.description, loaded.random_weights
    if isinstance(loaded, nn.Module):
        return loaded, None, type(loaded).__name__, None
    raise TokenCompressError(f"expected a LoadedModel or an nn.Module, got {type(loaded).__name__}")


def _check_frames(frames: Any) -> np.ndarray:
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] < 1:
        raise TokenCompressError(f"frames must be a non-empty [N, H, W, 3] array, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise TokenCompressError(f"frames must be uint8 RGB, got {arr.dtype}")
    return np.ascontiguousarray(arr)


def _question(question: str | Tensor | Sequence[int], tokenizer: Any) -> str | Tensor:
    if isinstance(question, str):
        if tokenizer is None:
            raise TokenCompressError(
                "a text question needs a tokenizer: pass a LoadedModel, or give token ids"
            )
        return question
    ids = torch.as_tensor(question, dtype=torch.long).flatten()
    if ids.numel() == 0:
        raise TokenCompressError("the question has no tokens")
    return ids


def _vision_module(target: Any) -> nn.Module | None:
    """The outermost module holding the ViT layers but not the LLM (SigLIP tower, Qwen2-VL
    ``visual``): its FLOPs are the "ViT" column, patch embedding included, projector excluded."""
    layers = target.vit_layers()
    if not layers:
        return None
    model, lm = target.model, target.language_model
    path = next((name for name, mod in model.named_modules() if mod is layers[0]), None)
    if path is None:
        return None
    parts = path.split(".")
    for i in range(1, len(parts) + 1):
        mod = model.get_submodule(".".join(parts[:i]))
        if not any(m is lm for m in mod.modules()):
            return mod
    return None


def _kv_bytes(cache: Any) -> int:
    total = 0
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, Tensor):
                total += t.nbytes
    return total


@contextmanager
def _peak_memory(device: torch.device) -> Iterator[dict[str, Any]]:
    """Peak extra memory of the block, in the most direct way this machine allows.

    CUDA reports its allocator's high-water mark exactly. On CPU there is no such counter, so
    resident memory is sampled; freed memory that the C allocator keeps is invisible to it, which
    is why the heap is trimmed first and why the figure is marked approximate.
    """
    out: dict[str, Any] = {"bytes": None, "method": None, "approximate": True}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        yield out
        torch.cuda.synchronize(device)
        out.update(
            bytes=int(torch.cuda.max_memory_allocated(device) - start),
            method="cuda max_memory_allocated",
            approximate=False,
        )
        return
    _trim_heap()
    rss = _rss_reader()
    if rss is not None:
        start = rss()
        peak = [start]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.005):
                peak[0] = max(peak[0], rss())

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield out
        finally:
            stop.set()
            thread.join()
            peak[0] = max(peak[0], rss())
        out.update(bytes=int(peak[0] - start), method="sampled RSS delta every 5 ms (approximate)")
        return
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        yield out
        return
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB elsewhere
    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield out
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start
    out.update(
        bytes=int(grown * scale),
        method="process max-RSS growth (approximate; 0 if an earlier peak was higher)",
    )


def _rss_reader() -> Callable[[], int] | None:
    path = "/proc/self/statm"
    if not os.path.exists(path):
        return None
    page = os.sysconf("SC_PAGE_SIZE")

    def read() -> int:
        with open(path) as fh:
            return int(fh.read().split()[1]) * page

    return read


def _trim_heap() -> None:
    """Give freed heap back to the OS so an earlier variant's peak does not hide this one's."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # pragma: no cover - not POSIX
        return None


def _notes(
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


# ------------------------------------------------------------------ frames
def sample_frames(video: str | os.PathLike[str], fps: float, n: int) -> tuple[np.ndarray, float, str | None]:
    """``n`` frames at the pipeline's ``fps``; a clip too short for that is sampled faster, and
    the returned note says so (the caller must show it: the rate changes what a chunk sees)."""
    from .video import iter_frames, probe

    if n < 1:
        raise TokenCompressError(f"need at least 1 frame, got {n}")
    got = [f.rgb for f in iter_frames(video, fps=fps, max_frames=n)]
    note = None
    if len(got) < n:
        info = probe(video)
        faster = n / info.duration_s if info.duration_s > 0 else None
        if faster is not None and faster > fps:
            more = [f.rgb for f in iter_frames(video, fps=faster, max_frames=n)]
            if len(more) > len(got):
                note = (
                    f"{Path(video).name} ({info.duration_s:.1f} s) gives only {len(got)} frame(s) at the "
                    f"pipeline's {fps:g} fps; sampled at {faster:.3g} fps instead to get {len(more)}"
                )
                got, fps = more, faster
        if len(got) < n:
            extra = f"{note}; " if note else ""
            note = f"{extra}only {len(got)} of {n} frames available"
    if not got:
        raise TokenCompressError(f"{video}: no frames were sampled")
    return np.stack(got), fps, note


# ------------------------------------------------------------------ report
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


def write_plot(result: BenchResult, path_png: str | os.PathLike[str]) -> Path | None:
    """Horizontal bars of pipeline / baseline (1.0 = baseline), time and FLOPs side by side per
    stage. Returns None, without raising, when matplotlib is not installed."""
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
    fig.savefig(path, dpi=120)
    return path
