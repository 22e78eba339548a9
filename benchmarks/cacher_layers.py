"""Per-frame STC-Cacher timings on the bench preset's vision tower, interleaved with the plain tower.

Times one-frame chunks of the SigLIP-so400m-width, 6-layer tower of ``--model builtin-bench``:
the plain tower, a Cacher reference chunk and a Cacher non-reference chunk, in turn, so machine
load lands on all three alike. Prints median [min-max] of the per-round ratios, and with
``--profile`` the torch profiler's op table of non-reference chunks (the evidence for where time
above the FLOP line goes).

    PYTHONPATH=. python benchmarks/cacher_layers.py --rounds 15 [--ratio 0.25] [--profile]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--ratio", type=float, default=0.25)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import SiglipVisionConfig, SiglipVisionModel

    from tokencompress.api.strategy import ChunkInfo
    from tokencompress.models.loading import BENCH_OVERRIDES
    from tokencompress.patching.block_routing import BlockPatch
    from tokencompress.strategies.stc_cacher import StcCacher, layer_macs, n_update
    from tokencompress.targets.llava.siglip_block import SiglipBlockAdapter

    v = BENCH_OVERRIDES["vision_config"]
    cfg = SiglipVisionConfig(**v, image_size=384, patch_size=14, vision_use_head=False)
    torch.manual_seed(0)
    model = SiglipVisionModel._from_config(cfg, attn_implementation="sdpa").eval()
    frames = torch.rand(args.rounds + 2, 1, 3, 384, 384)
    cacher = StcCacher(update_token_ratio=args.ratio, cache_interval=2)
    layers = model.encoder.layers
    patch = BlockPatch(layers, [SiglipBlockAdapter(layer) for layer in layers], [cacher])

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return 1e3 * (time.perf_counter() - t0)

    rounds: list[tuple[float, float, float]] = []
    load0 = os.getloadavg()[0]
    with torch.inference_mode(), patch:
        state = cacher.new_state()
        chunk = 0

        def cached(x: torch.Tensor) -> None:
            nonlocal chunk
            info = ChunkInfo(chunk, chunk, 1)
            cacher.start_chunk(state, info)
            chunk += 1
            with patch.chunk([state], info):
                model(pixel_values=x)

        for i in range(args.rounds + 1):
            x = frames[i]
            plain = timed(lambda x=x: model(pixel_values=x))
            ref = timed(lambda x=x: cached(x))
            non_ref = timed(lambda x=frames[i + 1]: cached(x))
            if i:  # the first round warms up
                rounds.append((plain, ref, non_ref))
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            cached(frames[0])
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(3):
                    cached(frames[1])
                    cached(frames[0]) if False else None
                    state.chunks_seen += 1  # stay non-reference
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    load1 = os.getloadavg()[0]

    def spread(xs: list[float]) -> str:
        return f"{statistics.median(xs):.3f} [{min(xs):.3f}-{max(xs):.3f}]"

    t, c, m = (384 // 14) ** 2, v["hidden_size"], v["intermediate_size"]
    macs = layer_macs(t, c, m, n_update(t, args.ratio))
    patch_macs = t * 588 * c
    layers_n = v["num_hidden_layers"]
    limit = (layers_n * macs.non_reference + patch_macs) / (layers_n * macs.full + patch_macs)
    print(
        f"load {load0:.2f} -> {load1:.2f}, {args.threads} threads, {len(rounds)} rounds, ratio {args.ratio}"
    )
    print(f"plain tower ms/frame: {spread([r[0] for r in rounds])}")
    print(f"reference / plain:     {spread([r[1] / r[0] for r in rounds])}")
    print(f"non-reference / plain: {spread([r[2] / r[0] for r in rounds])}  (FLOP limit {limit:.3f})")


if __name__ == "__main__":
    main()
