"""Eager vs torch.compile on the bench preset's vision tower: the plain tower and STC-Cacher chunks.

Times one-frame chunks of the SigLIP-so400m-width, 6-layer tower of ``--model builtin-bench``
(random weights): the plain tower eager and compiled (``TowerCompile``: the layers' stock
forward), and STC-Cacher reference and non-reference chunks eager and compiled (the strategy's
``compiled`` kernels), all six in turn within every round so machine load lands on all alike.
Prints median [min-max] of the per-round ratios, the compile time (first call minus a steady
call, and the backend's own seconds) and how far compiled outputs are from eager ones, and
writes them as JSON.

    PYTHONPATH=. python benchmarks/compiled.py --rounds 8 [--backend inductor] [--mode default] \
        [--json benchmarks/results/compiled.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--ratio", type=float, default=0.25)
    ap.add_argument("--interval", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", default="inductor")
    ap.add_argument("--mode", default=None)
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--warm-cache", action="store_true", help="keep inductor's on-disk cache (default: a fresh, cold one)"
    )
    args = ap.parse_args()
    cold = tempfile.TemporaryDirectory() if not args.warm_cache else None
    if cold is not None:  # before torch is imported: this process's inductor cache only
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cold.name
    import torch

    torch.set_num_threads(args.threads)

    from transformers import SiglipVisionConfig, SiglipVisionModel

    from tokencompress.api.strategy import ChunkInfo
    from tokencompress.models.loading import BENCH_OVERRIDES
    from tokencompress.patching.block_routing import BlockPatch
    from tokencompress.patching.compiling import CompileOptions, Compiler, TowerCompile
    from tokencompress.strategies.stc_cacher import StcCacher
    from tokencompress.targets.llava.siglip_block import SiglipBlockAdapter

    v = BENCH_OVERRIDES["vision_config"]
    cfg = SiglipVisionConfig(**v, image_size=384, patch_size=14, vision_use_head=False)
    torch.manual_seed(0)
    model = SiglipVisionModel._from_config(cfg, attn_implementation="sdpa").eval()
    frames = torch.rand(2 * args.rounds + 4, 1, 3, 384, 384)
    options = CompileOptions(backend=args.backend, mode=args.mode)
    tower_compiler, cacher_compiler = Compiler(options), Compiler(options)
    layers = model.encoder.layers
    adapters = [SiglipBlockAdapter(layer) for layer in layers]
    eager_cacher = StcCacher(update_token_ratio=args.ratio, cache_interval=args.interval)
    compiled_cacher = eager_cacher.compiled(cacher_compiler)
    tower = TowerCompile(layers, tower_compiler)

    class Cached:
        """One stream of one-frame chunks through a Cacher (its own patch, entered per call)."""

        def __init__(self, cacher: StcCacher) -> None:
            self.cacher, self.state, self.chunk = cacher, cacher.new_state(), 0
            self.patch = BlockPatch(layers, adapters, [cacher])

        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            info = ChunkInfo(self.chunk, self.chunk, 1)
            self.cacher.start_chunk(self.state, info)
            self.chunk += 1
            with self.patch, self.patch.chunk([self.state], info):
                return model(pixel_values=x).last_hidden_state

    def plain(x: torch.Tensor) -> torch.Tensor:
        return model(pixel_values=x).last_hidden_state

    def plain_compiled(x: torch.Tensor) -> torch.Tensor:
        with tower:
            return model(pixel_values=x).last_hidden_state

    def timed(fn, x) -> tuple[float, torch.Tensor]:
        t0 = time.perf_counter()
        out = fn(x)
        return 1e3 * (time.perf_counter() - t0), out

    eager_stream, compiled_stream = Cached(eager_cacher), Cached(compiled_cacher)
    names = ("plain", "plain_c", "ref", "non_ref", "ref_c", "non_ref_c")
    rounds: list[dict[str, float]] = []
    first: dict[str, float] = {}
    diffs: dict[str, float] = {"plain": 0.0, "ref": 0.0, "non_ref": 0.0}
    scale = 0.0
    load0 = os.getloadavg()[0]
    with torch.inference_mode():
        for i in range(args.rounds + 1):  # round 0 compiles and warms up
            x, y = frames[2 * i], frames[2 * i + 1]
            t = {}
            t["plain"], p_e = timed(plain, x)
            t["plain_c"], p_c = timed(plain_compiled, x)
            t["ref"], r_e = timed(eager_stream, x)
            t["non_ref"], n_e = timed(eager_stream, y)
            t["ref_c"], r_c = timed(compiled_stream, x)
            t["non_ref_c"], n_c = timed(compiled_stream, y)
            for key, (a, b) in {"plain": (p_c, p_e), "ref": (r_c, r_e), "non_ref": (n_c, n_e)}.items():
                diffs[key] = max(diffs[key], float((a - b).abs().max()))
            scale = max(scale, float(p_e.abs().max()))
            if i == 0:
                first = t
            else:
                rounds.append(t)
    load1 = os.getloadavg()[0]

    def spread(xs: list[float]) -> dict[str, float]:
        return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}

    def ratio(a: str, b: str) -> dict[str, float]:
        return spread([r[a] / r[b] for r in rounds])

    steady = {k: statistics.median(r[k] for r in rounds) for k in names}
    result = {
        "what": "one-frame chunks of the builtin-bench vision tower (SigLIP-so400m widths, 6 layers, "
        "384 px, 729 tokens, random weights); eager vs torch.compile, interleaved rounds",
        "compiled": options.describe(),
        "inductor_cache": "cold (fresh directory)" if cold is not None else "warm (the user's cache)",
        "cacher": {"update_token_ratio": args.ratio, "cache_interval": args.interval},
        "rounds": len(rounds),
        "threads": args.threads,
        "load_average": [load0, load1],
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "ms_per_frame": {k: spread([r[k] for r in rounds]) for k in names},
        "compiled_over_eager": {
            "plain tower": ratio("plain_c", "plain"),
            "cacher reference chunk": ratio("ref_c", "ref"),
            "cacher non-reference chunk": ratio("non_ref_c", "non_ref"),
        },
        "over_eager_plain_tower": {
            "cacher reference, eager": ratio("ref", "plain"),
            "cacher non-reference, eager": ratio("non_ref", "plain"),
            "cacher reference, compiled": ratio("ref_c", "plain"),
            "cacher non-reference, compiled": ratio("non_ref_c", "plain"),
            "plain tower, compiled": ratio("plain_c", "plain"),
        },
        "compile": {
            "tower": {
                "first_call_minus_steady_s": (first["plain_c"] - steady["plain_c"]) / 1e3,
                "backend_s": tower_compiler.seconds,
                "graphs": tower_compiler.graphs,
            },
            "cacher": {
                "first_calls_minus_steady_s": (
                    first["ref_c"] + first["non_ref_c"] - steady["ref_c"] - steady["non_ref_c"]
                )
                / 1e3,
                "backend_s": cacher_compiler.seconds,
                "graphs": cacher_compiler.graphs,
            },
        },
        "max_abs_diff_compiled_vs_eager": diffs,
        "output_abs_max": scale,
    }
    text = format_text(result)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        args.json.with_suffix(".txt").write_text(text + "\n")


def format_text(r: dict) -> str:
    def fmt(s: dict[str, float]) -> str:
        return f"{s['median']:.3f} [{s['min']:.3f}-{s['max']:.3f}]"

    lines = [
        f"{r['what']}",
        f"{r['compiled']}; {r['rounds']} rounds, {r['threads']} threads, load {r['load_average'][0]:.2f} -> "
        f"{r['load_average'][1]:.2f} on {r['cpus']} CPUs, torch {r['torch']}",
        f"inductor cache: {r['inductor_cache']}",
        f"Cacher update_token_ratio {r['cacher']['update_token_ratio']}, cache_interval {r['cacher']['cache_interval']}",
        "",
        "ms per frame (median [min-max]):",
        *(f"  {k:<10} {fmt(s)}" for k, s in r["ms_per_frame"].items()),
        "compiled / eager, per round:",
        *(f"  {k:<28} {fmt(s)}" for k, s in r["compiled_over_eager"].items()),
        "over the eager plain tower, per round:",
        *(f"  {k:<32} {fmt(s)}" for k, s in r["over_eager_plain_tower"].items()),
        "compile time:",
        *(
            f"  {k:<7} {c.get('first_call_minus_steady_s', c.get('first_calls_minus_steady_s')):.1f} s "
            f"first call(s) above steady, {c['backend_s']:.1f} s in the backend, {c['graphs']} graph(s)"
            for k, c in r["compile"].items()
        ),
        "max |compiled - eager| (outputs up to {:.2f}): ".format(r["output_abs_max"])
        + ", ".join(f"{k} {d:.2e}" for k, d in r["max_abs_diff_compiled_vs_eager"].items()),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
