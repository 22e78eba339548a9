"""Shared builders: tiny random-weight models made from configs (no downloads anywhere)."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def tiny_llava_ov_config(**over):
    from transformers import LlavaOnevisionConfig

    vision = dict(
        model_type="siglip_vision_model",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=112,
        patch_size=14,
        vision_use_head=False,
    )
    text = dict(
        model_type="qwen2",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1000,
        max_position_embeddings=4096,
    )
    vision.update(over.pop("vision_config", {}))
    text.update(over.pop("text_config", {}))
    kw = dict(
        image_token_index=998,
        video_token_index=999,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )
    kw.update(over)
    return LlavaOnevisionConfig(vision_config=vision, text_config=text, **kw)


def build_tiny_llava_ov(seed: int = 0, **over):
    """8x8 = 64 ViT tokens, 4x4 = 16 pooled tokens per frame."""
    from transformers import LlavaOnevisionForConditionalGeneration

    torch.manual_seed(seed)
    return LlavaOnevisionForConditionalGeneration(tiny_llava_ov_config(**over)).eval()


@pytest.fixture(scope="session")
def tiny_llava_ov():
    return build_tiny_llava_ov()


def random_frames(n: int, seed: int = 0, h: int = 40, w: int = 50) -> np.ndarray:
    """Smoothly varying uint8 frames (a moving gradient plus noise), never all zero."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    frames = []
    for t in range(n):
        base = (np.sin((xx + 3 * t) / 7.0) + np.cos((yy - 2 * t) / 5.0)) * 60 + 128
        img = base[..., None] + rng.normal(0, 20, size=(h, w, 3))
        frames.append(np.clip(img, 1, 255).astype(np.uint8))
    return np.stack(frames)


@pytest.fixture
def frames():
    return random_frames(6)
