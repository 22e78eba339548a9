"""Targets for ``Qwen2VLForConditionalGeneration`` (LiveCC) and ``Qwen2_5_VLForConditionalGeneration``.

Everything shared lives in :mod:`.qwen_vl_base`; the two differ in what the base asks of them:
Qwen2.5-VL packs its tower in window order (windowed blocks attend within 112-px windows,
``fullatt_block_indexes`` per slice) and scales the M-RoPE time axis by
``tokens_per_second · second_per_grid_ts``.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import nn

from ...api.types import StreamConfig
from .qwen_vl_base import QwenVLOptions, QwenVLTarget

__all__ = ["Qwen2VLTarget", "Qwen2_5_VLTarget", "Qwen2_5_VLOptions"]

_TINY_TEXT: dict[str, Any] = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    vocab_size=1000, max_position_embeddings=4096, bos_token_id=None, eos_token_id=None,
    rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
)  # fmt: skip
_TINY_IDS: dict[str, int] = dict(
    image_token_id=995, video_token_id=996, vision_start_token_id=997, vision_end_token_id=998
)


def _seeded(build: Any, seed: int) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build().eval()


class Qwen2VLTarget(QwenVLTarget):
    name = "qwen2_vl"
    summary = "Qwen2-VL (LiveCC): packed ViT with 2-D rotary, 2x2 merger per 2-frame slice, 3-D M-RoPE"

    @classmethod
    def matches(cls, model: Any) -> bool:
        from transformers import Qwen2VLForConditionalGeneration

        return isinstance(model, Qwen2VLForConditionalGeneration)

    @classmethod
    def tiny_model(cls, seed: int = 0) -> nn.Module:
        """2 blocks of width 32, 2-layer LLM of width 64, vocabulary 1000."""
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

        config = Qwen2VLConfig(
            text_config=dict(_TINY_TEXT),
            vision_config=dict(
                depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                spatial_merge_size=2, temporal_patch_size=2,
            ),
            **_TINY_IDS,
        )  # fmt: skip
        return _seeded(lambda: Qwen2VLForConditionalGeneration(config), seed)


class Qwen2_5_VLOptions(QwenVLOptions):
    second_per_grid_t: float | None = Field(
        None,
        gt=0,
        description="Seconds one temporal slice spans. Default: temporal_patch_size / stream.fps, as the "
        "stock processor computes it (1.0 for 2-frame slices at 2 fps). Scales the M-RoPE time axis.",
    )


class Qwen2_5_VLTarget(QwenVLTarget):
    name = "qwen2_5_vl"
    summary = "Qwen2.5-VL: Qwen2-VL layout plus windowed ViT blocks (window order) and time-scaled M-RoPE"
    Options = Qwen2_5_VLOptions
    windowed = True

    @classmethod
    def matches(cls, model: Any) -> bool:
        from transformers import Qwen2_5_VLForConditionalGeneration

        return isinstance(model, Qwen2_5_VLForConditionalGeneration)

    @classmethod
    def tiny_model(cls, seed: int = 0) -> nn.Module:
        """4 blocks (1 and 3 full, 0 and 2 in 56-px windows), width 32."""
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        config = Qwen2_5_VLConfig(
            text_config=dict(_TINY_TEXT),
            vision_config=dict(
                depth=4, hidden_size=32, out_hidden_size=64, intermediate_size=64, num_heads=2, patch_size=14,
                spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1, 3],
                tokens_per_second=2,
            ),
            **_TINY_IDS,
        )  # fmt: skip
        return _seeded(lambda: Qwen2_5_VLForConditionalGeneration(config), seed)

    def configure_stream(self, stream: StreamConfig) -> None:
        self._fps = stream.fps

    def rope_index_kwargs(self) -> dict[str, Any]:
        seconds = self.options.second_per_grid_t  # type: ignore[attr-defined]
        if seconds is None:
            seconds = self._vcfg.temporal_patch_size / getattr(self, "_fps", 2.0)
        return {"second_per_grid_ts": torch.tensor([float(seconds)], device=self.device)}
