"""The GPU table: plain vs STC-Cacher reference / non-reference chunks, prefill with the STC-Pruner, and
the new methods' own overheads, timed with CUDA events on a lent device (or perf_counter on CPU).

Three blocks, each a fresh pair of streams per repeat on the same decoded frames and weights, the
baseline (the same config without stages) and the method taking turns chunk by chunk, as
``tokencompress bench`` does; every figure is a per-repeat ratio reported as median [min-max]:

* ``vit``: ``stream.encode_only`` of every chunk under ``pipelines/stc_cacher.yaml`` over the plain
  tower, split by the Cacher's chunk kind (reference / non-reference; median over the chunks of
  a kind, then the ratio);
* ``prefill_pruner``: per chunk the STC-Pruner's own time plus the prefill of the 60 tokens it keeps,
  over the prefill of all of them (frames encoded once up front, as ``pruner_prefill.py``), and the
  pruner's share of the pruned prefill;
* ``overheads``: whole chunks (``stream.add_frames``) of ``pipelines/<name>.yaml`` over the baseline's
  for evs, dtd, dycoke_ttm, streamingtom_ctr and infinipot_v, plus the
  token stages' share of the prefill from the stream's own (device-synchronised) timers.

A CUDA event pair brackets every timed call (``elapsed_time`` after the end event synchronised);
without CUDA the script says so and times with ``time.perf_counter``, so it runs (and is tested) on
CPU. The JSON records the GPU's name, torch's and CUDA's versions and the host's ISA
(:func:`tokencompress.kernels.machine.describe`). About 2-4 minutes on an H100 with the defaults.

    PYTHONPATH=. python benchmarks/gpu_table.py [--model builtin-bench] [--frames 16] [--repeats 5]
        [--warmup 1] [--out benchmarks/results/gpu_table.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("evs", "dtd", "dycoke_ttm", "streamingtom_ctr", "infinipot_v")
"""``pipelines/<name>.yaml`` of the methods whose own overhead the table gives."""
CPU_MODE = "no CUDA: timing on CPU with perf_counter"


class Clock:
    """Milliseconds of one call: CUDA events on a GPU, ``time.perf_counter`` on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.mode = "CUDA events" if self.cuda else CPU_MODE

    def ms(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end), out
        t0 = time.perf_counter()
        out = fn()
        return (time.perf_counter() - t0) * 1e3, out


def spread(xs: list[float]) -> dict[str, Any] | None:
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "runs": xs}


def _kind(states: list[Any]) -> str:
    flags = [s.is_reference for s in states if isinstance(getattr(s, "is_reference", None), bool)]
    return "all" if not flags else ("reference" if any(flags) else "non_reference")


def _pair(name: str, loaded: Any) -> tuple[Any, Any]:
    """(baseline, method) bound to the one model: the method's YAML, and its config without stages."""
    from tokencompress.pipeline.pipeline import Pipeline

    pipe = Pipeline.from_yaml(ROOT / "pipelines" / f"{name}.yaml")
    base = Pipeline(dataclasses.replace(pipe.config, name="baseline", stages={}), pipe.registry)
    return base.bind(loaded.model), pipe.bind(loaded.model)


def _rounds(args: argparse.Namespace, one: Callable[[], dict[str, float]]) -> dict[str, Any]:
    """``warmup`` untimed rounds, then ``repeats`` rounds; each gives ratios, spread over repeats."""
    for _ in range(args.warmup):
        one()
    runs = [one() for _ in range(args.repeats)]
    return {k: spread([r.get(k) for r in runs]) for k in runs[0]}


def vit_block(args: argparse.Namespace, loaded: Any, frames: list, clock: Clock) -> dict[str, Any]:
    base, pipe = _pair("stc_cacher", loaded)

    def one() -> dict[str, float]:
        streams = [b.stream(tokenizer=loaded.tokenizer) for b in (base, pipe)]
        times: list[list[float]] = [[], []]
        kinds = []
        for f in frames:
            for j, (b, s) in enumerate(zip((base, pipe), streams, strict=True)):
                with b.patched():
                    times[j].append(clock.ms(lambda s=s, f=f: s.encode_only(f[None]))[0])
            kinds.append(_kind(streams[1].states))
        out = {"vit_all": sum(times[1]) / sum(times[0])}
        for kind in ("reference", "non_reference"):
            ix = [i for i, k in enumerate(kinds) if k == kind]
            if ix:
                med = [statistics.median(t[i] for i in ix) for t in times]
                out[f"vit_{kind}"] = med[1] / med[0]
        return out

    return _rounds(args, one)


def pruner_block(args: argparse.Namespace, loaded: Any, frames: list, clock: Clock) -> dict[str, Any]:
    from tokencompress.api.types import ChunkInfo
    from tokencompress.strategies.stc_pruner import StcPruner

    base, _ = _pair("stc_pruner", loaded)
    with base.patched():
        carriers = [base.stream(tokenizer=loaded.tokenizer).encode_only(f[None]) for f in frames]
    keep = min(60, carriers[0].count)
    pruner, target = StcPruner(tokens_per_frame=keep), base.target

    def one() -> dict[str, float]:
        streams = [base.stream(tokenizer=loaded.tokenizer) for _ in range(2)]
        with base.patched():
            for s in streams:
                s._ensure_prefix()
            state = pruner.new_state()
            b_t, p_t, pp_t = 0.0, 0.0, 0.0
            for i, tok in enumerate(carriers):
                b_t += clock.ms(lambda tok=tok: target.prefill_visual(streams[0].llm, tok))[0]
                ms, kept = clock.ms(lambda i=i, tok=tok: pruner.apply(tok, state, ChunkInfo(i, i, 1)))
                p_t += ms
                pp_t += clock.ms(lambda kept=kept: target.prefill_visual(streams[1].llm, kept))[0]
        return {
            "pruner_plus_prefill_over_prefill": (p_t + pp_t) / b_t,
            "pruner_share_of_pruned_prefill": p_t / pp_t,
        }

    return {"tokens_per_frame": carriers[0].count, "keep": keep, **_rounds(args, one)}


def overhead_block(
    name: str, args: argparse.Namespace, loaded: Any, frames: Any, clock: Clock
) -> dict[str, Any]:
    base, pipe = _pair(name, loaded)
    step = pipe.config.stream.frames_per_chunk

    def one() -> dict[str, float]:
        streams = [b.stream(tokenizer=loaded.tokenizer) for b in (base, pipe)]
        total = [0.0, 0.0]
        for start in range(0, len(frames), step):
            for j, (b, s) in enumerate(zip((base, pipe), streams, strict=True)):
                with b.patched():
                    total[j] += clock.ms(lambda s=s, a=start: s.add_frames(frames[a : a + step]))[0]
                    if len(frames) - start < step:
                        s.flush()
        hist = streams[1].history
        prefill = sum(c.prefill_ms for c in hist)
        return {
            "chunk_time_over_baseline": total[1] / total[0],
            "token_stages_share_of_prefill": sum(c.compress_ms for c in hist) / prefill if prefill else None,
        }

    return {"frames_per_chunk": step, **_rounds(args, one)}


def machine(clock: Clock) -> dict[str, Any]:
    from tokencompress.kernels.machine import describe

    return {
        **describe(),
        "timing": clock.mode,
        "gpu": torch.cuda.get_device_name() if clock.cuda else None,
        "cuda": torch.version.cuda,
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from tokencompress.media.video import iter_frames, sample_video_path
    from tokencompress.models.loading import load_model

    loaded = load_model(args.model)
    device = next(loaded.model.parameters()).device
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        device = torch.device("cuda")
        loaded.model.to(device)
    clock = Clock(device)
    print(f"timing: {clock.mode}", flush=True)
    clip = sample_video_path("bikes.mp4")
    frames = np.stack(
        [f.rgb for f in iter_frames(clip, fps=max(0.5, args.frames / 10.0), max_frames=args.frames)]
    )
    out: dict[str, Any] = {
        "machine": machine(clock),
        "model": loaded.description,
        "frames": len(frames),
        "repeats": args.repeats,
        "warmup": args.warmup,
    }
    blocks: dict[str, Callable[[], dict[str, Any]]] = {
        "vit": lambda: vit_block(args, loaded, list(frames), clock),
        "prefill_pruner": lambda: pruner_block(args, loaded, list(frames), clock),
        **{f"overhead_{m}": (lambda m=m: overhead_block(m, args, loaded, frames, clock)) for m in METHODS},
    }
    if args.only:
        blocks = {k: v for k, v in blocks.items() if k in args.only.split(",")}
    with torch.inference_mode():
        for key, block in blocks.items():
            t0 = time.perf_counter()
            try:
                out[key] = block()
            except Exception as exc:  # one method failing must not lose the others' rows
                out[key] = {"error": f"{type(exc).__name__}: {exc}"}
            out[key]["seconds"] = round(time.perf_counter() - t0, 1)
            print(f"{key}: {_line(out[key])}", flush=True)
    return out


def _line(row: dict[str, Any]) -> str:
    if "error" in row:
        return row["error"]
    parts = []
    for k, v in row.items():
        if isinstance(v, dict):
            parts.append(f"{k} {v['median']:.3f} [{v['min']:.3f}-{v['max']:.3f}]")
    return ", ".join(parts) + f" ({row['seconds']} s)"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin-bench")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    ap.add_argument(
        "--only", default=None, help="comma-separated blocks (vit, prefill_pruner, overhead_<name>)"
    )
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    out = run(args)
    m = out["machine"]
    print(
        f"{m['timing']}; GPU {m['gpu']}, torch {m['torch']}, CUDA {m['cuda']}, host ISA {m['cpu_capability']}"
    )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(out, indent=1))
        tmp.replace(args.out)
    return out


if __name__ == "__main__":
    main()
