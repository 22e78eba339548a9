"""Target for ``LlavaNextVideoForConditionalGeneration``.

Vision path per frame: CLIP tower (class token + 24×24 patches at 336 px) →
``hidden_states[vision_feature_layer]`` (-2 on the real checkpoints) with the CLS row dropped
(strategy ``default``) → ``vision_resampler``: 2×2 average pooling of the grid **before** the
projector → 12×12 = 144 tokens per frame → 2-layer MLP projector. No newline token for video;
the LLM is Llama/Vicuna with 1-D RoPE, so kept tokens simply follow each other.

Unlike LLaVA-OneVision, ``post_vit`` is not count-locked. When its strategies drop or merge
tokens (VisionZip ``placement: before_pool``, the authors' own setting on CLIP towers), the
pooler, which reshapes a full square grid, is skipped and the kept encoder tokens go through
the projector directly: the selection takes the pooler's place, as VisionZip replaces LLaVA's
fixed token count. Those tokens reach ``pre_prefill`` on the encoder's grid (their carrier keeps
ViT-grid positions). A full grid takes the stock path unchanged.

Inside the tower every layer sees the class token too (``1 + g²`` rows per frame, CLS first), so
``pre_vit_block`` strategies see it and CLS-aware ones (ToMe ``class_token``, VisionZip's CLS
score from a probed layer) find it at row 0. The stage is count-locked: the stock pooler needs
the full grid of ``hidden_states[-2]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...api.block_adapter import BlockAdapter
from ...api.target import StageRunner, Target
from ...api.tokens import VisualTokens
from ...api.types import Capability, ChatFormat, ChunkInfo, Stage, StageInfo
from ...media.frames import resize_frames
from ..qwen.qwen_patches import CLIP_MEAN, CLIP_STD
from .feature_layer import selected_features
from .siglip_block import SiglipBlockAdapter

__all__ = ["LlavaNextVideoTarget"]


class LlavaNextVideoTarget(Target):
    name = "llava_next_video"
    summary = (
        "LLaVA-NeXT-Video (CLIP with CLS + Llama): 576 → 2x2 average pool → 144 tokens per frame, 1-D RoPE"
    )
    provides = {
        Stage.PRE_VIT_BLOCK: frozenset(
            {Capability.BLOCK_ADAPTER, Capability.POSITION_FREE_ATTENTION, Capability.CLS_TOKEN}
        ),
        Stage.POST_VIT: frozenset({Capability.ATTENTION, Capability.KEYS, Capability.CLS_TOKEN}),
        Stage.PRE_PREFILL: frozenset({Capability.ATTENTION, Capability.KEYS, Capability.CLS_TOKEN}),
        # a Llama decoder with 1-D RoPE: queries and keys readable pre-RoPE, positions renumberable
        Stage.KV_CACHE: frozenset({Capability.PRE_ROPE_PROJECTIONS, Capability.ROPE_1D}),
    }
    kv_cache_strategies = frozenset({"infinipot_v", "rekv", "sliding_window", "streamingtom_oqm"})
    tokenizer_layout = (
        "llava_onevision"  # a fallback tokenizer needs <video>; the model reads ids from its config
    )

    @classmethod
    def matches(cls, model: Any) -> bool:
        from transformers import LlavaNextVideoForConditionalGeneration

        return isinstance(model, LlavaNextVideoForConditionalGeneration)

    @classmethod
    def tiny_model(cls, seed: int = 0, image_size: int = 56) -> nn.Module:
        """56 px CLIP (4×4 patches + CLS, pooled to 2×2) + 2-layer Llama, vocabulary 1000.

        ``image_size=336`` gives the real checkpoints' token geometry (24×24 + CLS → 144 pooled) on
        the same tiny widths, for pipelines whose budgets are set for it.
        """
        from transformers import LlavaNextVideoConfig, LlavaNextVideoForConditionalGeneration

        config = LlavaNextVideoConfig(
            vision_config=dict(
                model_type="clip_vision_model", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, image_size=image_size, patch_size=14, projection_dim=64,
            ),
            text_config=dict(
                model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, vocab_size=1000, max_position_embeddings=4096,
            ),
            image_token_index=998, video_token_index=999, vision_feature_layer=-2,
            vision_feature_select_strategy="default", spatial_pool_mode="average", spatial_pool_stride=2,
        )  # fmt: skip
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return LlavaNextVideoForConditionalGeneration(config).eval()

    def chat_format(self) -> ChatFormat:
        """Vicuna's ``USER: <video>\n{question} ASSISTANT:``, the template of the 7B checkpoints
        (the 34B ones use their own; override this for them)."""
        return ChatFormat(prefix="USER: ", question="\n{question} ASSISTANT:", stop_tokens=("</s>",))

    # ------------------------------------------------------------ geometry
    @property
    def _vcfg(self) -> Any:
        return self.model.config.vision_config

    @property
    def _tower(self) -> nn.Module:
        return self.model.model.vision_tower

    def _grid(self) -> int:
        return self._vcfg.image_size // self._vcfg.patch_size

    def _pooled(self) -> int:
        return self._grid() // int(self.model.config.spatial_pool_stride)

    def stage_info(self) -> dict[Stage, StageInfo]:
        g, p = self._grid(), self._pooled()
        vit_dim = self._vcfg.hidden_size
        llm_dim = self.model.config.get_text_config().hidden_size
        return {
            # the layers see CLS + g² rows per frame
            Stage.PRE_VIT_BLOCK: StageInfo(
                Stage.PRE_VIT_BLOCK, g * g + 1, vit_dim, (g, g), count_locked=True
            ),
            Stage.POST_VIT: StageInfo(Stage.POST_VIT, g * g, vit_dim, (g, g)),
            Stage.PRE_PREFILL: StageInfo(Stage.PRE_PREFILL, p * p, llm_dim, (p, p)),
        }

    def vit_layers(self) -> Sequence[nn.Module]:
        return list(self._tower.encoder.layers)

    def block_adapter(self, layer: nn.Module) -> BlockAdapter:
        return SiglipBlockAdapter(layer)

    # ---------------------------------------------------------------- frames
    def preprocess(self, frames: Sequence[np.ndarray] | np.ndarray | Tensor) -> Tensor:
        """Resize every frame to the tower's square input (bicubic, antialiased) and CLIP-normalise.

        The stock processor resizes the short side and centre-crops; a stream keeps the whole frame.
        """
        s = self._vcfg.image_size
        x = resize_frames(frames, (s, s))
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        dtype = self._tower.embeddings.patch_embedding.weight.dtype
        return ((x - mean) / std).contiguous().to(device=self.device, dtype=dtype)

    # ---------------------------------------------------------------- vision
    @torch.inference_mode()
    def encode(self, pixels: Tensor, chunk: ChunkInfo, run_stage: StageRunner) -> VisualTokens:
        inner = self.model.model
        cfg = self.model.config
        out = self._tower(pixels, output_hidden_states=True, return_dict=True)
        feats = selected_features(out.hidden_states, cfg)
        g = self._grid()
        tokens = run_stage(Stage.POST_VIT, VisualTokens.from_frames(feats, (g, g), chunk.first_frame))
        if tokens.is_full_grid():
            pooled = inner.vision_resampler(tokens.tokens.view(pixels.shape[0], g * g, -1))
            p = self._pooled()
            pre = VisualTokens.from_frames(inner.multi_modal_projector(pooled), (p, p), chunk.first_frame)
        else:  # the post_vit selection replaces the pooler (see the module docstring)
            pre = tokens.with_tokens(inner.multi_modal_projector(tokens.tokens))
        return run_stage(Stage.PRE_PREFILL, pre)

    def prefill_grid_map(self) -> Callable[[Tensor], Tensor] | None:
        """The resampler's own map on ``[F, g², K]`` quantities: average pooling of the g×g grid."""
        if self.model.config.spatial_pool_mode != "average":
            return None  # max/conv pooling has no per-token map that commutes with the features
        g, stride = self._grid(), int(self.model.config.spatial_pool_stride)

        def to_pooled(x: Tensor) -> Tensor:
            f, _, k = x.shape
            grid = x.reshape(f, g, g, k).permute(0, 3, 1, 2)
            pooled = F.avg_pool2d(grid, kernel_size=stride, stride=stride)
            return pooled.flatten(2).transpose(1, 2)

        return to_pooled
