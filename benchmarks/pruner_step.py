"""Time one STC-Pruner / VidCom² prune per chunk, next to the prefill of the tokens it keeps.

Sizes are the bench preset's (issue 11): 196 tokens of width 896 per frame (Qwen2-0.5B widths after
LLaVA-OV's pooling), one frame per chunk, 60 kept. The prefill reference is an 8-layer LLM of
Qwen2-0.5B widths with random weights, prefilling one chunk's kept tokens after ``--context``
cached tokens. Times are the calling thread's CPU time (``time.thread_time``), so a loaded machine
inflates them far less than wall time; with ``--threads 1`` (the default) that is all the work.
Per-repeat medians over the chunks, reported as median [min-max] over interleaved repeats.

    PYTHONPATH=$PWD python benchmarks/pruner_step.py [--repeats 7] [--chunks 200]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tokencompress.api.strategy import ChunkInfo
from tokencompress.api.tokens import VisualTokens
from tokencompress.strategies.stc_pruner import StcPruner


def _prune_seconds(strategy, frames: list[torch.Tensor]) -> float:
    """Median seconds of one ``apply`` over a stream of one-frame chunks (carrier built outside)."""
    state = strategy.new_state()
    carriers = [VisualTokens.from_frames(x, (14, 14), first_frame=i) for i, x in enumerate(frames)]
    times = []
    for i, tok in enumerate(carriers):
        chunk = ChunkInfo(i, i, 1)
        t0 = time.thread_time()
        strategy.apply(tok, state, chunk)
        times.append(time.thread_time() - t0)
    return statistics.median(times)


def _prefill_seconds(kept: int, context: int, repeats: int) -> float:
    from transformers import DynamicCache, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=8,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=1000,
        max_position_embeddings=4096,
    )
    model = Qwen2ForCausalLM(cfg).eval()
    embeds = torch.randn(1, context + kept, 896) * 0.02
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            cache = DynamicCache(config=cfg)
            if context:
                model(inputs_embeds=embeds[:, :context], cache=cache, use_cache=True)
            pos = torch.arange(context, context + kept)[None]
            t0 = time.thread_time()
            model(inputs_embeds=embeds[:, context:], cache=cache, position_ids=pos, use_cache=True)
            times.append(time.thread_time() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--chunks", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--keep", type=int, default=60)
    ap.add_argument("--context", type=int, default=600, help="cached tokens before the chunk's prefill")
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(0)
    frames = [torch.randn(1, 196, 896, generator=gen).to(dtype) for _ in range(args.chunks)]
    strategies = {"stc_pruner": StcPruner(tokens_per_frame=args.keep)}
    try:  # the streaming VidCom² baseline prunes through the same kernels
        from tokencompress.strategies.vidcom2_stream import VidCom2Stream

        strategies["vidcom2_stream"] = VidCom2Stream(tokens_per_frame=args.keep, stream_score="two_score")
    except ImportError:
        from tokencompress.strategies.vidcom2 import VidCom2

        strategies["vidcom2_stream"] = VidCom2(
            mode="streaming", tokens_per_frame=args.keep, stream_score="two_score"
        )
    for s in strategies.values():  # warm-up
        _prune_seconds(s, frames[:20])
    runs: dict[str, list[float]] = {name: [] for name in strategies}
    for _ in range(args.repeats):
        for name, s in strategies.items():
            runs[name].append(_prune_seconds(s, frames))
    prefill = _prefill_seconds(args.keep, args.context, max(5, args.repeats))
    print(f"threads={args.threads} dtype={args.dtype} chunk=1x196x896 keep={args.keep} chunks={args.chunks}")
    print(f"prefill of {args.keep} kept tokens after {args.context} cached: {prefill * 1e3:.2f} ms")
    for name, xs in runs.items():
        med = statistics.median(xs)
        print(
            f"{name:15s} per chunk: {med * 1e6:7.1f} us [{min(xs) * 1e6:.1f}-{max(xs) * 1e6:.1f}]"
            f"  = {100 * med / prefill:.2f} % of that prefill"
        )


if __name__ == "__main__":
    main()
