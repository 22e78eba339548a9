"""Running both variants: one untimed counting pass each, then interleaved timed repeats.

A compression method is only worth what it saves relative to running without it, and on a
shared CPU the absolute numbers drift by 2-5x between minutes (docs/design.md §9). So both
variants run in one process, on the same decoded frames and the same weights, and the timed
repeats alternate between them chunk by chunk so drift lands on both alike.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..api.errors import TokenCompressError
from ..kernels.machine import describe
from ..media.frames import as_frames
from ..models.loading import LoadedModel
from ..patching.compiling import CompileOptions
from ..pipeline.pipeline import BoundPipeline, Pipeline
from ..stream.chunk_summary import summarize
from ..stream.kv_stats import kv_cache_note, retrieval_overhead, strategy_stats
from ..stream.stream import ChunkStats, Stream
from .fidelity import fidelity
from .measuring import count_flops, kv_bytes, load_average, peak_memory
from .reporting import calibration_notes, notes_for
from .results import BenchResult, VariantResult
from .spreads import per_repeat_ratios

__all__ = ["DEFAULT_QUESTION", "check_counts", "run_benchmark"]

DEFAULT_QUESTION = "What is happening in the video?"


def check_counts(repeats: int, warmup: int, prefix: str = "") -> None:
    """The one check of a benchmark's ``repeats`` (>= 1) and ``warmup`` (>= 0); ``prefix`` is
    ``"--"`` where they came from the command line."""
    if repeats < 1:
        raise TokenCompressError(f"{prefix}repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise TokenCompressError(f"{prefix}warmup must be >= 0, got {warmup}")


def run_benchmark(
    pipeline: Pipeline,
    loaded_model: LoadedModel | nn.Module,
    frames: np.ndarray,
    question_ids_or_text: str | Tensor | Sequence[int] = DEFAULT_QUESTION,
    repeats: int = 3,
    warmup: int = 1,
    progress: bool = True,
    compile: CompileOptions | None = None,
) -> BenchResult:
    """Measure ``pipeline`` against the same config without stages on ``frames`` ``[N, H, W, 3]``.

    Two kinds of run, each a fresh stream over all frames followed by a one-token answer:

    * one untimed counting pass per variant: FLOPs, KV size, peak memory, and the final visual
      tokens and first-token logits that the fidelity figures compare;
    * ``warmup`` + ``repeats`` chunk-interleaved runs: both variants' streams advance in lock
      step (baseline chunk 0, pipeline chunk 0, baseline chunk 1, ...), so the load swings of
      a shared machine, which last seconds, land on both alike. Each repeat gives one ratio per
      figure (:mod:`.spreads`), reported as median [min-max] over repeats; end-to-end time is
      the repeat's chunks plus its answer.

    ``compile`` runs both variants compiled (:mod:`tokencompress.patching.compiling`), after one untimed
    compile warm-up run of each, whose time the notes give.
    """
    check_counts(repeats, warmup)
    model, tokenizer, description, random_weights = _unpack(loaded_model)
    frames = _check_frames(frames)
    question = _question(question_ids_or_text, tokenizer)
    load_before = load_average()
    runners = _runners(pipeline, model, tokenizer, frames, question, compile)
    compiled_note = _compile_warmup(runners, compile) if compile is not None else None
    _run_all(runners, warmup, repeats, progress)
    load = [load_before, load_average()]
    baseline, compressed = (r.result() for r in runners)
    base_r, pipe_r = runners
    target = runners[1].bound.target
    kv_cache = retrieval_overhead(pipe_r.answers)
    notes = _notes(pipeline, notes_for(baseline, compressed, model, load), compiled_note, kv_cache)
    if pipe_r.kv_stats:
        notes.append(f"kv_cache stats after a repeat: {json.dumps(pipe_r.kv_stats, sort_keys=True)}")
    notes += calibration_notes(
        {id(s): s for s in pipe_r.bound.patch.strategies + pipe_r.bound.steps}.values()
    )
    return BenchResult(
        pipeline_name=pipeline.name,
        model=description,
        random_weights=random_weights,
        frames=int(frames.shape[0]),
        frame_shape=[int(s) for s in frames.shape[1:]],
        frames_per_chunk=pipeline.config.stream.frames_per_chunk,
        prefill_chunks=pipeline.config.stream.prefill_chunks,
        repeats=repeats,
        warmup=warmup,
        device=str(target.device),
        threads=torch.get_num_threads(),
        torch_version=torch.__version__,
        machine=describe(),
        load_average=None if None in load else load,
        baseline=baseline,
        pipeline=compressed,
        notes=notes,
        kv_cache=kv_cache,
        spreads=per_repeat_ratios(baseline.runs, compressed.runs, compressed.chunk_kinds),
        fidelity=fidelity(base_r.final_tokens, pipe_r.final_tokens, base_r.first_logits, pipe_r.first_logits),
    )


def _runners(
    pipeline: Pipeline,
    model: nn.Module,
    tokenizer: Any,
    frames: np.ndarray,
    question: str | Tensor,
    compile: CompileOptions | None,
) -> list[_Runner]:
    """The baseline (the same config with no stages, so only the stages differ) and the pipeline,
    both bound to the one ``model`` so they share weights and frames."""
    base_cfg = dataclasses.replace(pipeline.config, name="baseline", stages={})
    return [
        _Runner(
            "baseline",
            Pipeline(base_cfg, pipeline.registry).bind(model, compile),
            tokenizer,
            frames,
            question,
        ),
        _Runner(pipeline.name, pipeline.bind(model, compile), tokenizer, frames, question),
    ]


def _run_all(runners: list[_Runner], warmup: int, repeats: int, progress: bool) -> None:
    """Every variant's counting pass, then ``warmup + repeats`` interleaved runs, behind one progress
    bar on stderr (``1 + warmup + repeats`` steps per variant)."""
    from tqdm import tqdm

    total = len(runners) * (1 + warmup + repeats)  # per variant: counting pass, interleaved runs
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


def _notes(
    pipeline: Pipeline, notes: list[str], compiled_note: str | None, kv_cache: dict[str, float] | None
) -> list[str]:
    """``notes`` (the figures' own, from :func:`notes_for`) plus what the reader needs to compare
    the run with another: compiling, the kv_cache retrieval overhead, grouped prefills and packed
    decoder kernels."""
    if compiled_note:
        notes.append(compiled_note)
    if kv_cache is not None:
        notes.append(kv_cache_note(kv_cache))
    group = pipeline.config.stream.prefill_chunks
    if group > 1:
        notes.append(
            f"prefill: the kept tokens of {group} consecutive chunks are prefilled in one LLM call "
            "(stream.prefill_chunks), baseline and pipeline alike; a chunk whose tokens wait reports 0 ms, "
            "so the per-chunk prefill median is over the group prefills; prefill FLOPs are counted chunk by chunk"
        )
    if pipeline.config.stream.decoder_kernels == "packed":
        notes.append(
            "decoder: linears on prepacked weights (stream.decoder_kernels: packed), baseline and pipeline "
            "alike; equal to the stock layers to float32 rounding"
        )
    return notes


def _compile_warmup(runners: Sequence[_Runner], options: CompileOptions) -> str:
    """One untimed run of every variant, so compiling (every graph: reference and other chunks,
    a shorter last chunk) happens before the counting pass and the timed repeats."""
    start = time.perf_counter()
    _interleaved(runners, keep=False)
    wall = time.perf_counter() - start
    parts = []
    for r in runners:
        c = r.bound.compiler
        assert c is not None
        parts.append(f"{r.label} {c.graphs} graph(s), {c.seconds:.1f} s in the backend")
    return (
        f"compiled ({options.describe()}); compile warm-up (one untimed run of each variant) "
        f"{wall:.1f} s: " + "; ".join(parts)
    )


def _interleaved(runners: Sequence[_Runner], keep: bool) -> None:
    """One run of every variant, chunk by chunk in turn; each variant's patch is on only for its own
    calls, so the other runs on the stock model in between."""
    streams = [r.bound.stream(tokenizer=r.tokenizer) for r in runners]
    frames = runners[0].frames
    step = runners[0].bound.config.stream.frames_per_chunk
    kinds: list[list[str]] = [[] for _ in runners]
    for start in range(0, len(frames), step):
        for r, stream, kind in zip(runners, streams, kinds, strict=True):
            with r.bound.patched():
                stream.add_frames(frames[start : start + step])
                if len(frames) - start < step:  # a short last chunk is a chunk of its own, as at the end
                    stream.flush()  # of a stream (a full one needs none: it would close a prefill group)
            kind.append(_chunk_kind(stream.states))
    for r, stream, kind in zip(runners, streams, kinds, strict=True):
        with r.bound.patched():
            answer = stream.ask(r.question, max_new_tokens=1)
        if keep:
            r.measured.append((list(stream.history), answer.first_token_ms, answer.total_ms))
            r.answers.append(answer)
            r.kinds = kind
            r.kv_stats = strategy_stats(stream)
        if r.bar is not None:
            r.bar.update(1)


def _chunk_kind(states: Sequence[Any]) -> str:
    """``reference`` / ``non_reference`` for a chunk a reference-caching strategy (STC-Cacher) just
    encoded, read off its per-stream state; ``all`` otherwise."""
    flags = [s.is_reference for s in states if isinstance(getattr(s, "is_reference", None), bool)]
    if not flags:
        return "all"
    return "reference" if any(flags) else "non_reference"


class _Runner:
    """Streams one variant, and keeps what its runs produced."""

    def __init__(
        self, label: str, bound: BoundPipeline, tokenizer: Any, frames: np.ndarray, question: Any
    ) -> None:
        self.label = label
        self.bound = bound
        self.tokenizer = tokenizer
        self.frames = frames
        self.question = question
        self.bar: Any = None
        self.measured: list[tuple[list[ChunkStats], float, float]] = []
        self.answers: list[Any] = []
        """Per kept repeat: chunk stats, first-token ms and answer ms."""
        self.kv_stats: dict[str, Any] = {}
        """The kv_cache strategy's own statistics after the last kept repeat (empty without one)."""
        self.kinds: list[str] = []
        self.flops: list[dict[str, int]] = []
        self.counted: dict[str, Any] = {}
        self.final_tokens: list[Any] = []
        self.first_logits: Tensor | None = None

    def count(self) -> None:
        """Untimed pass through the stream's public steps, chunk by chunk: FLOPs of the vision path
        (its ViT part through the target's vision seam) and of the visual prefill, KV-cache size,
        peak memory, and for the fidelity figures the final visual tokens and the first answer
        token's logits."""
        target = self.bound.target
        step = self.bound.config.stream.frames_per_chunk
        missing_tower = False
        with peak_memory(target.device) as memory, self.bound.patched():
            stream = self.bound.stream(tokenizer=self.tokenizer)
            if self.tokenizer is not None:  # the chat prefix goes first, as in a real stream
                stream.prefill_ids(_prefix_ids(stream, self.tokenizer))
            for start in range(0, len(self.frames), step):
                with count_flops(target) as encode:
                    tokens = stream.encode_only(self.frames[start : start + step])
                with count_flops(target) as prefill, stream.decoder.scope():
                    stream.decoder.announce(tokens)  # an in_decoder strategy ranks this chunk
                    target.prefill_visual(stream.llm, tokens)
                self.final_tokens.append(tokens)
                missing_tower = missing_tower or encode.vision_calls == 0
                vit = encode.vision if encode.vision_calls else encode.total
                self.flops.append(
                    {"vit_flops": vit, "encode_flops": encode.total, "prefill_flops": prefill.total}
                )
            kv = (stream.llm.length, stream.llm.visual_tokens, kv_bytes(stream.llm.cache))
            self.first_logits = stream.ask(self.question, max_new_tokens=1).first_logits
        self.counted = {
            "kv_tokens": kv[0],
            "kv_visual_tokens": kv[1],
            "kv_bytes": kv[2],
            "peak_memory": memory,
            "flops_note": (
                "ViT FLOPs include the projector and pooling: the target's vision module was never called"
                if missing_tower
                else None
            ),
        }
        if self.bar is not None:
            self.bar.update(1)

    def result(self) -> VariantResult:
        history = self.measured[0][0]
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
                "prefilled_chunks": c.prefilled_chunks,
            }
            for key in ("preprocess_ms", "vit_ms", "compress_ms", "kv_ms", "prefill_ms", "total_ms"):
                row[key] = statistics.median(getattr(s, key) for s in per_run)
            row.update(self.flops[i])
            chunks.append(row)
        s = summarize(history, self.counted["kv_tokens"])
        tokens = {
            "vit": s["vit_tokens"],
            "post_vit": [s["post_vit_tokens_before"], s["post_vit_tokens_after"]],
            "pre_prefill": [s["llm_tokens_before"], s["llm_tokens_after"]],
            "llm_visual": s["llm_tokens_after"],
        }
        runs = [
            {
                "chunks": [
                    {k: getattr(c, k) for k in ("vit_ms", "compress_ms", "kv_ms", "prefill_ms", "total_ms")}
                    for c in hist
                ],
                "first_token_ms": first,
                "answer_ms": answer,
            }
            for hist, first, answer in self.measured
        ]
        e2e = [sum(c["total_ms"] for c in run["chunks"]) + run["answer_ms"] for run in runs]
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
            runs=runs,
            chunk_kinds=list(self.kinds),
        )


# ------------------------------------------------------------------ inputs
def _unpack(loaded: LoadedModel | nn.Module) -> tuple[nn.Module, Any, str, bool | None]:
    if isinstance(loaded, LoadedModel):
        return loaded.model, loaded.tokenizer, loaded.description, loaded.random_weights
    if isinstance(loaded, nn.Module):
        return loaded, None, type(loaded).__name__, None
    raise TokenCompressError(f"expected a LoadedModel or an nn.Module, got {type(loaded).__name__}")


def _check_frames(frames: Any) -> np.ndarray:
    """The stream's own frame check, plus: at least one frame, as one contiguous array."""
    arr = as_frames(frames)
    if not arr:
        raise TokenCompressError("frames must be a non-empty [N, H, W, 3] array, got no frames")
    return np.ascontiguousarray(np.stack(arr))


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


def _prefix_ids(stream: Stream, tokenizer: Any) -> Tensor:
    """The chat prefix a stream prefills before its first chunk, as token ids."""
    return torch.tensor(tokenizer.encode(stream.prefix_text(), add_special_tokens=False), dtype=torch.long)
