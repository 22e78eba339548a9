"""Run inside the vLLM side environment: save the tiny built-in Qwen2.5-VL as a vLLM checkpoint.

``python make_checkpoint.py DIR``. The model is tokencompress's ``builtin-qwen`` (random weights,
the offline Qwen2 tokenizer) with one change vLLM's CPU attention needs: its decoder heads are 32
wide instead of 16 (2 query heads, 1 key/value head over the same width 64, and the M-RoPE sections
scaled to the head), since that backend supports head sizes 32 and up. The processor files are
written with the transformers of the side environment (its video processor needs torchvision,
which the project's own environment does not have). Both runtimes then load this one folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from tokencompress import load_model

MAX_PIXELS = 448 * 448


def main(out: Path) -> None:
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    loaded = load_model("builtin-qwen")
    config = loaded.model.config
    text = config.get_text_config()
    text.num_attention_heads, text.num_key_value_heads = 2, 1
    text.rope_parameters["mrope_section"] = [4, 6, 6]  # sums to head_dim / 2 = 16
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = type(loaded.model)(config).eval()
    model.save_pretrained(out)
    loaded.tokenizer.save_pretrained(out)
    sizes = {"min_pixels": 56 * 56, "max_pixels": MAX_PIXELS}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**sizes),
        video_processor=Qwen2VLVideoProcessor(**sizes),
        tokenizer=loaded.tokenizer,
        chat_template=loaded.tokenizer.chat_template,
    )
    processor.save_pretrained(out)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
