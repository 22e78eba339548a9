"""Tiny random-weight models and frames the tests share (no downloads anywhere), and the marker
for tests whose reference needs a recent transformers."""

from __future__ import annotations

import numpy as np
import pytest


def build_tiny_llava_ov(seed: int = 0):
    """The library's tiny LLaVA-OV: 8x8 = 64 ViT tokens, 4x4 = 16 pooled tokens per frame."""
    from tokencompress.targets.llava.llava_onevision import LlavaOnevisionTarget

    return LlavaOnevisionTarget.tiny_model(seed)


def random_frames(n: int, seed: int = 0, h: int = 40, w: int = 50) -> np.ndarray:
    """Smoothly varying uint8 frames (a moving gradient plus noise), never all zero: the kit's own."""
    from tokencompress.testing.frames import moving_frames

    return moving_frames(n, seed, h, w)


def answer_and_cache(bound, frames, question_ids=(5, 9, 14, 3)):
    """A fresh stream on ``bound`` fed ``frames`` one by one and asked ``question_ids``: the answer
    and a copy of every cache layer's (keys, values), for comparing decoder paths."""
    import torch

    s = bound.stream()
    for f in frames:
        s.add_frames(f[None])
    answer = s.ask(torch.tensor(list(question_ids)), max_new_tokens=3)
    return answer, [(layer.keys.clone(), layer.values.clone()) for layer in s.llm.cache.layers]


def _transformers_at_least(version: str) -> bool:
    import transformers

    have = tuple(int(p) for p in transformers.__version__.split(".")[:2] if p.isdigit())
    return have >= tuple(int(p) for p in version.split("."))


stock_reference_5_24 = pytest.mark.skipif(
    not _transformers_at_least("5.24"),
    reason="the reference side feeds the stock forward encoder outputs (mm_encoder_outputs, per-video "
    "deepstack lists), an API of transformers 5.24; the target under test runs on older 5.x too",
)
"""For tests whose *reference* computation needs a stock API that transformers 5.24 added."""
