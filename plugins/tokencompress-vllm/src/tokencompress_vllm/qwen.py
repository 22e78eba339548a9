"""Qwen2.5-VL in vLLM with a tokencompress pipeline choosing the video tokens.

Registered under vLLM's own architecture name, so a checkpoint needs no change: without a
``tokencompress`` entry in ``additional_config`` the model and its processor are exactly vLLM's.
With one, they use vLLM's own pruning contract (the one its EVS uses):

* the processor writes :meth:`ServingPlan.count` video placeholders for a video of grid
  ``[t, h, w]`` instead of ``t * h * w / 4``;
* ``embed_multimodal`` runs the encoder as usual, then the pipeline selects each video's kept
  merged tokens (:meth:`ServingPlan.select`); every kept row carries 4 extra columns, its M-RoPE
  position ``[t, h, w, w_max]`` in the unpruned layout (``compute_mrope_for_media``), which the
  model runner strips in ``recompute_mrope_positions`` and turns into the prompt's positions.

Images pass unpruned (they only carry their positions, as with EVS). Each video is one stream:
a request with two videos runs two fresh streams.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from . import INSTALL_HINT

try:
    from vllm.model_executor.models.qwen2_5_vl import (
        Qwen2_5_VLDummyInputsBuilder,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLMultiModalProcessor,
        Qwen2_5_VLProcessingInfo,
    )
    from vllm.multimodal import MULTIMODAL_REGISTRY
    from vllm.multimodal.processing import PromptReplacement, PromptUpdate
    from vllm.multimodal.video_prune.evs import compute_mrope_for_media
except ImportError as exc:  # the plugin installed without vLLM (or a vLLM without this model)
    raise ImportError(f"{INSTALL_HINT} ({exc})") from None

from .serving import ServedModel, ServedProcessor

__all__ = ["TokenCompressQwen2_5_VL", "TokenCompressQwen2_5_VLProcessor"]


class TokenCompressQwen2_5_VLProcessor(ServedProcessor, Qwen2_5_VLMultiModalProcessor):
    """vLLM's Qwen2.5-VL processor, writing the pipeline's planned count of video placeholders."""

    def _get_prompt_updates(
        self, mm_items: Any, hf_processor_mm_kwargs: Mapping[str, Any], out_mm_kwargs: Any
    ) -> Sequence[PromptUpdate]:
        updates = super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        plan = self._plan()
        if plan is None:
            return updates
        hf_processor = self.info.get_hf_processor(**hf_processor_mm_kwargs)
        video_id = self.info.get_tokenizer().get_vocab()[hf_processor.video_token]

        def video_placeholders(item_idx: int) -> list[int]:
            grid = out_mm_kwargs["video"][item_idx]["video_grid_thw"].data
            return [video_id] * plan.count(grid.tolist())

        return [
            PromptReplacement(modality="video", target=[video_id], replacement=video_placeholders)
            if u.modality == "video"
            else u
            for u in updates
        ]


@MULTIMODAL_REGISTRY.register_processor(
    TokenCompressQwen2_5_VLProcessor,
    info=Qwen2_5_VLProcessingInfo,
    dummy_inputs=Qwen2_5_VLDummyInputsBuilder,
)
class TokenCompressQwen2_5_VL(ServedModel, Qwen2_5_VLForConditionalGeneration):
    """vLLM's Qwen2.5-VL whose video token selection is a tokencompress pipeline's."""

    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._carry_plan()

    def _postprocess_video_embeds_evs(
        self, video_embeds_split: tuple[torch.Tensor, ...], video_input: Any
    ) -> tuple[torch.Tensor, ...]:
        plan = self.tokencompress_plan
        if plan is None:
            return super()._postprocess_video_embeds_evs(video_embeds_split, video_input)
        grids = video_input["video_grid_thw"].tolist()
        seconds = video_input.get("second_per_grid_ts")
        if seconds is None:  # as vLLM's EVS path: video embeddings passed without their timing
            raise ValueError("second_per_grid_ts is required when a tokencompress pipeline prunes videos")
        merge = self.visual.spatial_merge_size
        tokens_per_second = self.config.vision_config.tokens_per_second
        out = []
        for emb, grid, per_grid in zip(video_embeds_split, grids, seconds.long(), strict=True):
            chosen = plan.select(emb, grid)
            positions = compute_mrope_for_media(
                grid, merge, tokens_per_second=tokens_per_second, video_second_per_grid=per_grid.item()
            )[chosen.index.cpu()]
            self._record(grid, chosen.index)
            out.append(torch.cat([chosen.tokens.to(emb.dtype), positions.to(emb.device, emb.dtype)], dim=1))
        return tuple(out)
