"""Run inside the vLLM side environment: save a tiny built-in Qwen model as a vLLM checkpoint.

``python make_checkpoint.py DIR [qwen2_5_vl|qwen3_vl]`` (default ``qwen2_5_vl``). The model is
tokencompress's ``builtin-qwen`` (Qwen2.5-VL) or ``builtin-qwen3`` (Qwen3-VL with DeepStack):
random weights, the offline Qwen2 tokenizer, with one change vLLM's CPU attention needs: the
decoder heads are 32 wide instead of 16 (2 query heads, 1 key/value head over the same width 64,
and the M-RoPE sections scaled to the head), since that backend supports head sizes 32 and up.
The processor files are written with the transformers of the side environment (its video
processors need torchvision, which the project's own environment does not have). Both runtimes
then load this one folder. Frames of 448 x 448 pass both processors unresized.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from tokencompress import load_model

MAX_PIXELS = 448 * 448
MAX_FRAMES = 64
"""Qwen3-VL's video processor bounds the pixels of the whole clip, not of one frame."""
BUILTIN = {"qwen2_5_vl": "builtin-qwen", "qwen3_vl": "builtin-qwen3"}


def _processor(model: str, tokenizer):  # type: ignore[no-untyped-def]
    if model == "qwen2_5_vl":
        from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

        sizes = {"min_pixels": 56 * 56, "max_pixels": MAX_PIXELS}
        return Qwen2_5_VLProcessor(
            image_processor=Qwen2VLImageProcessor(**sizes),
            video_processor=Qwen2VLVideoProcessor(**sizes),
            tokenizer=tokenizer,
            chat_template=tokenizer.chat_template,
        )
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    half = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "patch_size": 16, "merge_size": 2}
    return Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(
            size={"shortest_edge": 64 * 64, "longest_edge": MAX_PIXELS}, **half
        ),
        video_processor=Qwen3VLVideoProcessor(
            size={"shortest_edge": 64 * 64, "longest_edge": MAX_FRAMES * MAX_PIXELS},
            cap_pixels_per_frame=False,
            **half,
        ),
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template,
    )


def main(out: Path, model_name: str = "qwen2_5_vl") -> None:
    loaded = load_model(BUILTIN[model_name])
    config = loaded.model.config
    text = config.get_text_config()
    text.num_attention_heads, text.num_key_value_heads = 2, 1
    if model_name == "qwen3_vl":
        text.head_dim = 32
    text.rope_parameters["mrope_section"] = [4, 6, 6]  # sums to head_dim / 2 = 16
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = type(loaded.model)(config).eval()
    model.save_pretrained(out)
    loaded.tokenizer.save_pretrained(out)
    _processor(model_name, loaded.tokenizer).save_pretrained(out)


if __name__ == "__main__":
    main(Path(sys.argv[1]), *sys.argv[2:3])
