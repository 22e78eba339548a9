"""The opt-in-by-default fast paths against stock on this machine, and what ``auto`` picks.

On one SigLIP-so400m-width layer of the bench preset (729 tokens of 1152, MLP 4304, one frame):
the Cacher's reference layer on the stock modules vs the row kernels (prepacked fused Q/K/V),
interleaved, plus the cost of ``fast_reference: auto``'s calibration and its choice on fresh
instances. On Qwen2-0.5B's decoder attention (14 query heads sharing 2 K/V heads, head dim 64):
transformers' stock ``sdpa`` (``repeat_kv`` copies) vs the grouped-K/V call, a chunk of ``--rows``
queries after a cache of each ``--cache`` length. Prints the ISA torch dispatches on first, so an
emulated AVX2 run (``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2``)
says so.

    PYTHONPATH=$PWD python benchmarks/fast_paths.py [--rounds 9] [--cache 1024,4096,12288]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import torch


def spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):.3f} [{min(xs):.3f}-{max(xs):.3f}]"


def interleaved(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each ``fns`` entry, one of each per round (after one warm-up round)."""
    for fn in fns.values():
        fn()
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            out[k].append(time.perf_counter() - t0)
    return out


def reference_layer_paths(rounds: int) -> dict:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from tokencompress.kernels.calibration import Calibration
    from tokencompress.models.loading import BENCH_OVERRIDES
    from tokencompress.strategies.stc_cacher import StcCacher, reference_layer
    from tokencompress.targets.llava.siglip_block import SiglipBlockAdapter

    v = BENCH_OVERRIDES["vision_config"]
    cfg = SiglipVisionConfig(
        **{**v, "num_hidden_layers": 1}, image_size=378, patch_size=14, vision_use_head=False
    )
    layer = SiglipVisionModel._from_config(cfg, attn_implementation="sdpa").eval().encoder.layers[0]
    h = torch.randn(1, 729, cfg.hidden_size)
    stock = SiglipBlockAdapter(layer)
    rows = stock.for_rows()
    times = interleaved(
        {"stock": lambda: reference_layer(stock, h), "rows": lambda: reference_layer(rows, h)}, rounds
    )
    ratios = [r / s for r, s in zip(times["rows"], times["stock"], strict=True)]
    picks, costs, auto_ratios = [], [], []
    for _ in range(3):  # fresh instances and adapters: each calibrates (and packs) from scratch
        cacher = StcCacher()
        cacher.calibration = Calibration()
        fresh = SiglipBlockAdapter(layer)
        cacher._reference_outputs(fresh, h)
        ((_, choice),) = cacher.calibration.choices.items()
        picks.append("rows" if choice.fast else "stock")
        costs.append(choice.cost_s * 1e3)
        auto_ratios.append(round(choice.ratio, 3))
    return {
        "stock_ms": spread([t * 1e3 for t in times["stock"]]),
        "rows_ms": spread([t * 1e3 for t in times["rows"]]),
        "rows_over_stock": spread(ratios),
        "auto_picks": picks,
        "auto_ratios": auto_ratios,
        "calibration_ms": spread(costs),
    }


def decoder_attention_paths(rounds: int, caches: list[int], rows: int) -> dict:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from tokencompress.patching.decoder_attention import GroupedKVAttention, sdpa_grouped_kv

    class Attn(torch.nn.Module):
        num_key_value_groups = 7
        is_causal = True

    module, owner = Attn(), GroupedKVAttention(None)
    module._tokencompress_grouped_kv = owner
    out = {}
    for s in caches:
        total = s + rows
        q = torch.randn(1, 14, rows, 64)
        k, v = torch.randn(1, 2, total, 64), torch.randn(1, 2, total, 64)
        mask = torch.ones(rows, total, dtype=torch.bool).tril(s)[None, None]
        with owner.calls():
            times = interleaved(
                {
                    "stock": lambda a=(q, k, v, mask): sdpa_attention_forward(module, *a, scaling=0.125),
                    "grouped": lambda a=(q, k, v, mask): sdpa_grouped_kv(module, *a, scaling=0.125),
                },
                rounds,
            )
        ratios = [g / st for g, st in zip(times["grouped"], times["stock"], strict=True)]
        out[str(s)] = {
            "stock_ms": spread([t * 1e3 for t in times["stock"]]),
            "grouped_ms": spread([t * 1e3 for t in times["grouped"]]),
            "grouped_over_stock": spread(ratios),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default="1024,4096,12288")
    ap.add_argument("--rows", type=int, default=60)
    ap.add_argument("--skip", default="", help="comma-separated: layer, attention")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from tokencompress.kernels.machine import describe

    skip = set(filter(None, args.skip.split(",")))
    report: dict = {"machine": describe(), "load_average_at_start": list(os.getloadavg())}
    if "layer" not in skip:
        report["reference_layer"] = reference_layer_paths(args.rounds)
    if "attention" not in skip:
        caches = [int(x) for x in args.cache.split(",")]
        report["decoder_attention"] = decoder_attention_paths(args.rounds, caches, args.rows)
    report["load_average_at_end"] = list(os.getloadavg())
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
