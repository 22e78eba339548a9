"""STC-Pruner + prefill against the unpruned prefill, over 4, 16 and 64 one-frame chunks.

The issue-11 figure "Pruner 60/196 + prefill": per chunk, the pruner's own time plus the prefill
of the 60 tokens it keeps, against the prefill of all 196, summed over the stream's first 4, 16
and 64 chunks (a longer stream attends over a longer cache, so the ratio falls towards the
attention term's). The ViT does not enter this figure, so every frame is encoded once, up front,
through the baseline (the ``pre_prefill`` carrier of ``--model builtin-bench``), and only the
token stage and the prefill are timed: baseline and pruned streams take turns chunk by chunk
(wall time, ``--threads`` threads), and each repeat gives one ratio per stream length, reported
as median [min-max] over repeats. ``--prefill-chunks k`` prefills k chunks' tokens together in
both streams (``stream.prefill_chunks``: the same segments a stream prefills together);
``--compile`` runs the pruner's dense kernels through ``torch.compile`` (inductor) as the opt-in
compiled path does (compiled during the untimed FLOP pass).

    PYTHONPATH=. python benchmarks/pruner_prefill.py [--chunks 64] [--repeats 5] [--out results/pruner_prefill.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

LENGTHS = (4, 16, 64)


def _spread(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "runs": xs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--keep", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prefill-chunks", type=int, default=1)
    ap.add_argument("--decoder-kernels", choices=("stock", "packed"), default="stock")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--model", default="builtin-bench")
    ap.add_argument(
        "--compile",
        action="store_true",
        help="run the pruner's dense kernels through torch.compile (inductor), as pipeline.apply(compile=True) does",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from tokencompress.api.tokens import VisualTokens
    from tokencompress.api.types import ChunkInfo
    from tokencompress.media.video import iter_frames, sample_video_path
    from tokencompress.models.loading import load_model
    from tokencompress.pipeline.pipeline import Pipeline
    from tokencompress.strategies.stc_pruner import StcPruner

    loaded = load_model(args.model)
    base = Pipeline.from_dict(
        {
            "name": "baseline",
            "stream": {"frames_per_chunk": 1, "decoder_kernels": args.decoder_kernels},
            "stages": {},
        }
    )
    clip = sample_video_path("bikes.mp4")
    duration = 10.0  # bikes.mp4 is 10 s long: this fps gives the chunks asked for
    fps = max(0.5, args.chunks / duration)
    frames = [f.rgb for f in iter_frames(clip, fps=fps, max_frames=args.chunks)]
    if len(frames) < args.chunks:
        raise SystemExit(f"only {len(frames)} frames at {fps} fps")
    pruner = StcPruner(tokens_per_frame=args.keep)  # on builtin-bench: 60 of 196 tokens per frame
    if args.compile:  # compiled on the untimed counting pass
        from tokencompress.patching.compiling import CompileOptions, Compiler

        pruner = pruner.compiled(Compiler(CompileOptions()))
    load0 = os.getloadavg()[0]
    with torch.inference_mode(), base.apply(loaded.model) as bound:
        enc = bound.stream(tokenizer=loaded.tokenizer)
        carriers: list[VisualTokens] = [enc.encode_only(f[None]) for f in frames]
        target = bound.target

        def one_repeat() -> tuple[list[float], list[float], list[float]]:
            """Per-chunk (baseline prefill, pruner, pruned prefill) seconds of one fresh pair of streams."""
            streams = [bound.stream(tokenizer=loaded.tokenizer) for _ in range(2)]
            for s in streams:
                s._ensure_prefix()
            state = pruner.new_state()
            b_t, p_t, pp_t = [], [], []
            waiting: list[list] = [[], []]

            def prefill(j: int, tokens: VisualTokens, flush: bool) -> None:
                """Stream ``j``'s chunk: its segment waits, and a full group (or the last) is prefilled."""
                waiting[j].append(target.visual_segment(streams[j].llm, tokens))
                if flush:
                    target.prefill_segments(streams[j].llm, waiting[j])
                    waiting[j] = []

            for i, tok in enumerate(carriers):
                flush = (i + 1) % args.prefill_chunks == 0 or i + 1 == len(carriers)
                t0 = time.perf_counter()
                prefill(0, tok, flush)
                t1 = time.perf_counter()
                kept = pruner.apply(tok, state, ChunkInfo(i, i, 1))
                t2 = time.perf_counter()
                prefill(1, kept, flush)
                t3 = time.perf_counter()
                b_t.append(t1 - t0)
                p_t.append(t2 - t1)
                pp_t.append(t3 - t2)
            return b_t, p_t, pp_t

        def counted() -> tuple[list[int], list[int]]:
            """Per-chunk prefill FLOPs (baseline, pruned) of one untimed pair of streams."""
            from tokencompress.bench.measuring import count_flops

            streams = [bound.stream(tokenizer=loaded.tokenizer) for _ in range(2)]
            for s in streams:
                s._ensure_prefix()
            state = pruner.new_state()
            got: tuple[list[int], list[int]] = ([], [])
            for i, tok in enumerate(carriers):
                kept = pruner.apply(tok, state, ChunkInfo(i, i, 1))
                for j, t in enumerate((tok, kept)):
                    with count_flops(target) as tally:
                        target.prefill_visual(streams[j].llm, t)
                    got[j].append(tally.total)
            return got

        flops_base, flops_pruned = counted()
        for _ in range(args.warmup):
            one_repeat()
        runs = [one_repeat() for _ in range(args.repeats)]
    load1 = os.getloadavg()[0]
    out: dict = {
        "chunks": args.chunks,
        "keep": args.keep,
        "tokens_per_frame": carriers[0].count,
        "threads": args.threads,
        "prefill_chunks": args.prefill_chunks,
        "compile": args.compile,
        "decoder_kernels": args.decoder_kernels,
        "repeats": args.repeats,
        "fps": fps,
        "load_average": [round(load0, 2), round(load1, 2)],
        "torch": torch.__version__,
        "model": loaded.description,
        "lengths": {},
    }
    for n in [x for x in LENGTHS if x <= args.chunks]:
        ratio, share = [], []
        for b_t, p_t, pp_t in runs:
            ratio.append((sum(p_t[:n]) + sum(pp_t[:n])) / sum(b_t[:n]))
            share.append(sum(p_t[:n]) / sum(pp_t[:n]))
        base_ms = statistics.median(sum(r[0][:n]) * 1e3 / n for r in runs)
        out["lengths"][str(n)] = {
            "pruner_plus_prefill_over_prefill": _spread(ratio),
            "pruner_share_of_pruned_prefill": _spread(share),
            "baseline_prefill_ms_per_chunk": base_ms,
            "flop_ratio": sum(flops_pruned[:n]) / sum(flops_base[:n]),
        }
        r, s = (
            out["lengths"][str(n)]["pruner_plus_prefill_over_prefill"],
            out["lengths"][str(n)]["pruner_share_of_pruned_prefill"],
        )
        print(
            f"{n:3d} chunks: (pruner + prefill) / prefill {r['median']:.3f} [{r['min']:.3f}-{r['max']:.3f}]"
            f"  pruner / pruned prefill {100 * s['median']:.2f} % [{100 * s['min']:.2f}-{100 * s['max']:.2f}]"
            f"  baseline prefill {base_ms:.0f} ms/chunk"
            f"  FLOP ratio {out['lengths'][str(n)]['flop_ratio']:.3f}"
        )
    print(
        f"load {load0:.2f} -> {load1:.2f}, {args.threads} threads, {args.repeats} repeats, "
        f"prefill_chunks {args.prefill_chunks}, decoder_kernels {args.decoder_kernels}"
        + (", compiled pruner" if args.compile else "")
    )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(out, indent=1))
        tmp.replace(args.out)


if __name__ == "__main__":
    main()
