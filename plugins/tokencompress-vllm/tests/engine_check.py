"""Run inside the vLLM side environment: serve one video through vLLM once per case, print JSON.

``python engine_check.py CHECKPOINT FRAMES.npy CASES.json OUT_DIR``. CASES is a list of
``{"name", "additional_config"?, "video_pruning_rate"?, "prompt"?, "evs_main_features"?}``
(``prompt``: a key of :data:`PROMPTS`, default ``standard``; ``evs_main_features``: vLLM's own
Qwen3-VL EVS scores only a row's main features, see :func:`evs_on_main_features`). For each case one engine starts
(eager, one process), answers the same greedy request and reports the prompt length, the answer
and its log-probabilities, and the kept indices the plugin recorded (``record`` in
``additional_config.tokencompress``). An engine that refuses to start reports its error line.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

PROMPTS = {  # the standard placeholder, and the bare video token (which transformers 5.10+ expands alone)
    "standard": "<|vision_start|><|video_pad|><|vision_end|>",
    "bare": "<|video_pad|>",
}
PROMPT = "<|im_start|>user\n{video}What happens?<|im_end|>\n<|im_start|>assistant\n"
FPS = 2.0


def video(frames):
    n = len(frames)
    meta = {
        "fps": FPS,
        "duration": n / FPS,
        "total_num_frames": n,
        "frames_indices": list(range(n)),
        "video_backend": "opencv",
        "do_sample_frames": False,
    }
    return frames, meta


@contextlib.contextmanager
def evs_on_main_features(checkpoint: str):
    """vLLM's EVS on Qwen3-VL scores each video row as the encoder hands it over, the main features
    with the DeepStack levels appended; tokencompress's EVS (and the transformers path) scores the
    main features, the tokens the LLM reads. For one case, vLLM's selection sees the main part."""
    import vllm.model_executor.models.qwen3_vl as qwen3_vl

    dim = json.loads((Path(checkpoint) / "config.json").read_text())["vision_config"]["out_hidden_size"]
    original = qwen3_vl.compute_retention_mask

    def main_part(video_embeds, *args, **kwargs):
        return original(video_embeds[:, :dim], *args, **kwargs)

    qwen3_vl.compute_retention_mask = main_part
    try:
        yield
    finally:
        qwen3_vl.compute_retention_mask = original


def run_case(checkpoint: str, frames, case: dict, out_dir: Path) -> dict:
    scope = evs_on_main_features(checkpoint) if case.get("evs_main_features") else contextlib.nullcontext()
    with scope:
        return _run_case(checkpoint, frames, case, out_dir)


def _run_case(checkpoint: str, frames, case: dict, out_dir: Path) -> dict:
    from vllm import LLM

    kwargs = {}
    record = out_dir / f"{case['name']}.jsonl"
    if "additional_config" in case:
        extra = dict(case["additional_config"])
        if isinstance(extra.get("tokencompress"), dict):
            extra["tokencompress"] = {**extra["tokencompress"], "record": str(record)}
        kwargs["additional_config"] = extra
    if "video_pruning_rate" in case:
        kwargs["video_pruning_rate"] = case["video_pruning_rate"]
    try:
        llm = LLM(
            checkpoint,
            enforce_eager=True,
            dtype="float32",
            max_model_len=4096,
            limit_mm_per_prompt={"video": 1, "image": 0},
            seed=0,
            **kwargs,
        )
    except Exception as exc:  # the refusal line is what is checked
        return {"error": f"{type(exc).__name__}: {exc}"}
    try:
        return _answer(llm, frames, record, PROMPT.format(video=PROMPTS[case.get("prompt", "standard")]))
    except Exception as exc:  # one failing case must not hide the others
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        del llm
        gc.collect()


def _answer(llm, frames, record: Path, prompt: str) -> dict:
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=6, temperature=0, logprobs=0)
    (out,) = llm.generate({"prompt": prompt, "multi_modal_data": {"video": video(frames)}}, params)
    answer = out.outputs[0]
    logprobs = [float(lp[t].logprob) for t, lp in zip(answer.token_ids, answer.logprobs, strict=True)]
    kept = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    return {
        "prompt_tokens": len(out.prompt_token_ids),
        "answer": list(answer.token_ids),
        "logprobs": logprobs,
        "kept": kept,
    }


def main() -> None:
    import numpy as np

    checkpoint, frames_path, cases_path, out_dir = sys.argv[1:5]
    frames = np.load(frames_path)
    cases = json.loads(Path(cases_path).read_text())
    results = {case["name"]: run_case(checkpoint, frames, case, Path(out_dir)) for case in cases}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
