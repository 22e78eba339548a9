"""Time StreamingTOM CTR's own work per one-frame chunk, tower saliency given.

Sizes are the bench preset's: LLaVA-OneVision's 27×27 SigLIP grid, pooled to 196 tokens of width
896 per frame, one frame per chunk, ``G`` = 50 kept, defaults τ 0.9, k 7, β 0.6,
``saliency_source: tower``. What is timed is one ``StreamingTomCtr.apply`` (saliency map pooled
from the tapped layer's ``[1, 729]`` received attention to ``[1, 196]``, ``plan``, ``carve``,
``commit``); the carrier and the probe are built outside the timer.

The stream is real-ish: ``x_t = x_{t-1} + noise``, small noise (cosine ≈ 0.995) on most positions
and a fresh random row on a moving band of the grid plus scattered positions, so about 55 % of the
tokens are static and DPC-kNN, merging and the dynamic top-k all run every frame; the saliency is a
softmax over random logits (what a tower's mean received attention looks like: positive, sums to 1).

Times are the calling thread's CPU time (``time.thread_time``), so a loaded machine inflates them
far less than wall time; with ``--threads 1`` (the default) that is all the work. Per-repeat
medians over the chunks, reported as median [min-max] over repeats. ``--profile`` prints a
``torch.profiler`` op table of one pass instead. ``--prefill`` also times the prefill of the ``G``
kept tokens (the reference of ``benchmarks/pruner_step.py``) and prints CTR's share of it.

    PYTHONPATH=$PWD python benchmarks/ctr_step.py [--repeats 7] [--chunks 200] [--profile]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from types import SimpleNamespace

import torch

from tokencompress.api.tokens import VisualTokens
from tokencompress.api.types import ChunkInfo, LayerProbe
from tokencompress.strategies.streamingtom_ctr import StreamingTomCtr
from tokencompress.targets.llava.llava_onevision import LlavaOnevisionTarget

VIT_SIDE = 27
"""LLaVA-OneVision's SigLIP grid side (384 / 14); pooled bilinearly to 14×14."""
POOLED = (14, 14)


def stream(chunks: int, dim: int, seed: int = 0) -> list[torch.Tensor]:
    """``chunks`` frames ``[1, 196, dim]``: each the previous plus noise, with about 45 % of the
    positions (a band moving down the grid and scattered positions) replaced by fresh rows."""
    gen = torch.Generator().manual_seed(seed)
    n = POOLED[0] * POOLED[1]
    x = torch.randn(n, dim, generator=gen)
    frames = []
    for t in range(chunks):
        moved = torch.rand(n, generator=gen) < 0.3
        row = (torch.arange(n) // POOLED[1] - t) % POOLED[0]
        moved |= row < 3  # a band of 3 grid rows moving each frame
        x = x + 0.1 * torch.randn(n, dim, generator=gen)
        x = torch.where(moved[:, None], torch.randn(n, dim, generator=gen), x)
        frames.append(x[None].clone())
    return frames


def saliency_maps(chunks: int, seed: int = 1) -> list[torch.Tensor]:
    """``[1, 729]`` float32 per frame: mean attention received, as the tower tap hands it over."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.softmax(2 * torch.randn(1, VIT_SIDE**2, generator=gen), dim=-1) for _ in range(chunks)]


def _inputs(frames, maps) -> list[tuple[VisualTokens, ChunkInfo]]:
    """Carriers and chunk infos with the tap's probe (hidden states are never read with a tap)."""
    target = LlavaOnevisionTarget(
        SimpleNamespace(
            config=SimpleNamespace(vision_config=SimpleNamespace(image_size=VIT_SIDE * 14, patch_size=14))
        )
    )
    to_grid = target.prefill_grid_map()
    adapter = SimpleNamespace(cls_tokens=0)
    out = []
    for i, (x, received) in enumerate(zip(frames, maps, strict=True)):
        probe = LayerProbe(
            hidden=torch.empty(1, VIT_SIDE**2, 0), adapter=adapter, num_layers=27, received=received
        )
        out.append(
            (
                VisualTokens.from_frames(x, POOLED, first_frame=i),
                ChunkInfo(i, i, 1, probes={26: probe}, to_prefill_grid=to_grid),
            )
        )
    return out


def _apply_seconds(strategy: StreamingTomCtr, inputs) -> float:
    """Median seconds of one ``apply`` over the stream (fresh state)."""
    state = strategy.new_state()
    times = []
    for tok, chunk in inputs:
        t0 = time.thread_time()
        strategy.apply(tok, state, chunk)
        times.append(time.thread_time() - t0)
    return statistics.median(times)


def _prefill_seconds(kept: int, context: int, repeats: int) -> float:
    from benchmarks.pruner_step import _prefill_seconds as prefill

    return prefill(kept, context, repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--chunks", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--keep", type=int, default=50)
    ap.add_argument("--dim", type=int, default=896)
    ap.add_argument("--profile", action="store_true", help="print a torch.profiler op table of one pass")
    ap.add_argument(
        "--prefill", action="store_true", help="also time the kept tokens' prefill (needs transformers)"
    )
    ap.add_argument("--context", type=int, default=600, help="cached tokens before the chunk's prefill")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    strategy = StreamingTomCtr(tokens_per_frame=args.keep, saliency_source="tower")
    inputs = _inputs(stream(args.chunks, args.dim), saliency_maps(args.chunks))
    state = strategy.new_state()
    statics = []
    for tok, chunk in inputs[:50]:
        statics.append(int(strategy.plan(tok, strategy.saliency(tok, chunk), state).static_mask.sum()))
        strategy.apply(tok, state, chunk)
    _apply_seconds(strategy, inputs[:20])  # warm-up
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            _apply_seconds(strategy, inputs)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))
        return
    runs = []
    for _ in range(args.repeats):
        runs.append(_apply_seconds(strategy, inputs))
    load = os.getloadavg()
    print(
        f"threads={args.threads} chunk=1x196x{args.dim} G={args.keep} chunks={args.chunks} repeats={args.repeats} "
        f"static/frame median={statistics.median(statics[1:])} loadavg={load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    med = statistics.median(runs)
    line = f"streamingtom_ctr (tower) per chunk: {med * 1e6:7.1f} us [{min(runs) * 1e6:.1f}-{max(runs) * 1e6:.1f}]"
    if args.prefill:
        prefill = _prefill_seconds(args.keep, args.context, max(5, args.repeats))
        line += f"  = {100 * med / prefill:.2f} % of the prefill of {args.keep} after {args.context} ({prefill * 1e3:.2f} ms)"
    print(line)


if __name__ == "__main__":
    main()
