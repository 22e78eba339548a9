"""Target for ``LlavaOnevisionForConditionalGeneration`` (the base of ReKV and of the STC reference).

Vision path per frame: SigLIP tower → ``hidden_states[vision_feature_layer]``
(27×27 = 729 tokens at 384 px, no CLS) → 2-layer MLP projector → bilinear resize of the 27×27
grid to 14×14 = 196 tokens. Stock pooling needs the whole grid, so ``post_vit`` is count-locked
here; pruning happens on the pooled grid at ``pre_prefill``. The LLM is Qwen2 with 1-D RoPE.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from ...api.block_adapter import BlockAdapter
from ...api.target import LLMState, StageRunner, Target, TargetOptions
from ...api.tokens import VisualTokens
from ...api.types import Capability, ChunkInfo, Stage, StageInfo
from ...media.frames import resize_frames
from .feature_layer import selected_features
from .siglip_block import SiglipBlockAdapter

__all__ = ["LlavaOnevisionTarget", "LlavaOnevisionOptions"]

SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


class LlavaOnevisionOptions(TargetOptions):
    newline: bool = Field(
        False,
        description="Prefill LLaVA-OV's image_newline vector once before each question, as the stock model "
        "does after a whole video. Off by default, as in ReKV and STC.",
    )


class LlavaOnevisionTarget(Target):
    name = "llava_onevision"
    summary = "LLaVA-OneVision (SigLIP + Qwen2): 729 → 196 tokens per frame, 1-D RoPE"
    Options = LlavaOnevisionOptions
    provides = {
        Stage.PRE_VIT_BLOCK: frozenset(
            {Capability.BLOCK_ADAPTER, Capability.POSITION_FREE_ATTENTION, Capability.SUBSET_ATTENTION}
        ),
        Stage.POST_VIT: frozenset(),
        Stage.PRE_PREFILL: frozenset({Capability.ATTENTION, Capability.KEYS}),
        Stage.KV_CACHE: frozenset({Capability.PRE_ROPE_PROJECTIONS, Capability.ROPE_1D}),
    }
    tokenizer_layout = "llava_onevision"
    kv_cache_strategies = frozenset({"infinipot_v", "rekv", "sliding_window", "streamingtom_oqm"})

    @classmethod
    def matches(cls, model: Any) -> bool:
        from transformers import LlavaOnevisionForConditionalGeneration

        return isinstance(model, LlavaOnevisionForConditionalGeneration)

    @classmethod
    def tiny_model(cls, seed: int = 0) -> nn.Module:
        """112 px SigLIP (8×8 = 64 tokens, pooled to 4×4 = 16) + 2-layer Qwen2, vocabulary 1000."""
        from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

        config = LlavaOnevisionConfig(
            vision_config=dict(
                model_type="siglip_vision_model", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, image_size=112, patch_size=14, vision_use_head=False,
            ),
            text_config=dict(
                model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, vocab_size=1000, max_position_embeddings=4096,
            ),
            image_token_index=998, video_token_index=999, vision_feature_layer=-1,
            vision_feature_select_strategy="full",
        )  # fmt: skip
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return LlavaOnevisionForConditionalGeneration(config).eval()

    # ------------------------------------------------------------ geometry
    @property
    def _vcfg(self) -> Any:
        return self.model.config.vision_config

    def _grid(self) -> int:
        return self._vcfg.image_size // self._vcfg.patch_size

    def stage_info(self) -> dict[Stage, StageInfo]:
        g = self._grid()
        p = math.ceil(g / 2)
        vit_dim = self._vcfg.hidden_size
        llm_dim = self.model.config.get_text_config().hidden_size
        return {
            Stage.PRE_VIT_BLOCK: StageInfo(Stage.PRE_VIT_BLOCK, g * g, vit_dim, (g, g), count_locked=True),
            Stage.POST_VIT: StageInfo(Stage.POST_VIT, g * g, vit_dim, (g, g), count_locked=True),
            Stage.PRE_PREFILL: StageInfo(Stage.PRE_PREFILL, p * p, llm_dim, (p, p)),
        }

    def vit_layers(self) -> Sequence[nn.Module]:
        return list(self.model.model.vision_tower.encoder.layers)

    def block_adapter(self, layer: nn.Module) -> BlockAdapter:
        return SiglipBlockAdapter(layer)

    # ---------------------------------------------------------------- frames
    def preprocess(self, frames: Sequence[np.ndarray] | np.ndarray | Tensor) -> Tensor:
        """Resize every frame to the tower's square input (bicubic, antialiased) and SigLIP-normalise."""
        s = self._vcfg.image_size
        x = resize_frames(frames, (s, s))
        mean = torch.tensor(SIGLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(SIGLIP_STD).view(1, 3, 1, 1)
        dtype = self.model.model.vision_tower.embeddings.patch_embedding.weight.dtype
        return ((x - mean) / std).contiguous().to(device=self.device, dtype=dtype)

    # ---------------------------------------------------------------- vision
    @torch.inference_mode()
    def encode(self, pixels: Tensor, chunk: ChunkInfo, run_stage: StageRunner) -> VisualTokens:
        inner = self.model.model
        cfg = self.model.config
        out = inner.vision_tower(pixels, output_hidden_states=True, return_dict=True)
        feats = selected_features(out.hidden_states, cfg)
        g = self._grid()
        tokens = run_stage(Stage.POST_VIT, VisualTokens.from_frames(feats, (g, g), chunk.first_frame))
        if not tokens.is_full_grid():
            raise RuntimeError(
                "llava_onevision pools a full 27x27-style grid: post_vit strategies must keep every token"
            )
        projected = inner.multi_modal_projector(tokens.tokens.view(pixels.shape[0], g * g, -1))
        pooled = inner.apply_pooling(projected)
        p = math.ceil(g / 2)
        return run_stage(Stage.PRE_PREFILL, VisualTokens.from_frames(pooled, (p, p), chunk.first_frame))

    def prefill_grid_map(self) -> Callable[[Tensor], Tensor]:
        """Bilinear g×g → ceil(g/2)² resize, the same map ``apply_pooling`` applies to features."""
        g = self._grid()
        p = math.ceil(g / 2)

        def to_pooled(x: Tensor) -> Tensor:
            f, t, k = x.shape
            grid = x.reshape(f, g, g, k).permute(0, 3, 1, 2)
            pooled = F.interpolate(grid, size=(p, p), mode="bilinear")
            return pooled.permute(0, 2, 3, 1).reshape(f, p * p, k)

        return to_pooled

    def end_of_video(self, state: LLMState) -> None:
        if self.options.newline:
            newline = self.model.model.image_newline[None]
            self.prefill(state, newline, self.text_positions(state, 1), logits=False)
