"""Qwen3-VL in vLLM with a tokencompress pipeline choosing the video tokens.

Registered under vLLM's own architecture name: without a ``tokencompress`` entry in
``additional_config`` the model and its processor are exactly vLLM's. With one, they follow the
contract vLLM's own EVS uses on Qwen3-VL, where a video is one group per temporal slice,
``<t seconds><|vision_start|> tokens <|vision_end|>``:

* **Processor.** vLLM writes a pruned video with every timestamp and every group, but all of its
  placeholders in the first group (``[count, 0, 0, ...]``) and the whole span as embedding rows:
  how the kept tokens spread over the slices is known only after the encoder ran, so the prompt
  holds the total and the model lays the groups out. The plugin writes the pipeline's
  :meth:`ServingPlan.count` there (the sum of its chunks' counts) instead of EVS's.
* **Model.** ``embed_multimodal`` runs the encoder as usual; the pipeline selects each video's kept
  merged tokens (:meth:`ServingPlan.select`) on the main features (DeepStack features of a kept
  row follow it, as on the transformers path); vLLM's own ``_create_final_video_embeddings``
  then builds the span with the real count per slice: the timestamps' and markers' text
  embeddings, the kept rows, and 5 position columns per row ``[t, h, w, is_vision_start,
  is_vision]`` taken from the unpruned layout, which the runner strips and turns into the
  prompt's M-RoPE positions.
* **Positions.** transformers' Qwen3-VL processor (5.10 and later) expands only the
  ``<|video_pad|>`` of the standard ``<|vision_start|><|video_pad|><|vision_end|>`` placeholder,
  so the prompt keeps an outer ``<|vision_start|>`` before the first timestamp. vLLM's
  ``recompute_mrope_positions`` (``multimodal/video_prune/evs.py``) takes that outer marker for
  the first group's, placing the video's positions one timestamp too early (a negative index
  when the prompt before the video is shorter than a timestamp). The model hands that function
  the prompt with outer markers read as text, so both placeholder forms work. vLLM's rule for
  the prompt's first positions lays out a whole slice for a group that holds fewer tokens (a
  planned count below one slice's tokens, which EVS never plans); the surplus columns are dropped.

Images pass unpruned (they only carry their positions). Each video is one stream.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from . import INSTALL_HINT

try:
    from transformers import BatchFeature
    from vllm.model_executor.models.qwen3_vl import (
        Qwen3VLDummyInputsBuilder,
        Qwen3VLForConditionalGeneration,
        Qwen3VLMultiModalProcessor,
        Qwen3VLProcessingInfo,
    )
    from vllm.multimodal import MULTIMODAL_REGISTRY
    from vllm.multimodal.processing import PromptReplacement, PromptUpdate
except ImportError as exc:  # the plugin installed without vLLM (or a vLLM without this model)
    raise ImportError(f"{INSTALL_HINT} ({exc})") from None

from .groups import lumped, outer_starts_as_text, relayout, surplus_columns
from .serving import ServedModel, ServedProcessor

__all__ = ["TokenCompressQwen3_VL", "TokenCompressQwen3_VLProcessor"]


class TokenCompressQwen3_VLProcessor(ServedProcessor, Qwen3VLMultiModalProcessor):
    """vLLM's Qwen3-VL processor, writing the pipeline's planned count of video placeholders."""

    def _apply_hf_processor_main(self, mm_items: Any, hf_kwargs: Mapping[str, object]) -> BatchFeature:
        """vLLM's own expansion (unpruned groups), refilled with the planned counts."""
        out = super()._apply_hf_processor_main(mm_items, hf_kwargs)
        plan = self._plan()
        if plan is None or "video_grid_thw" not in out or "input_ids" not in out:
            return out
        grids = out["video_grid_thw"].tolist()
        input_ids = out["input_ids"]
        rows = input_ids if isinstance(input_ids, list) else input_ids.tolist()
        (ids,) = rows
        video_id = self.info.get_hf_config().video_token_id
        out["input_ids"] = [
            relayout(list(ids), video_id, [plan.count(g) for g in grids], [int(g[0]) for g in grids])
        ]
        return out

    def _get_prompt_updates(
        self, mm_items: Any, hf_processor_mm_kwargs: Mapping[str, Any], out_mm_kwargs: Any
    ) -> Sequence[PromptUpdate]:
        updates = super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        plan = self._plan()
        if plan is None:
            return updates
        hf_config = self.info.get_hf_config()
        tokenizer = self.info.get_tokenizer()

        def video_groups(item_idx: int) -> Any:
            item = out_mm_kwargs["video"][item_idx]
            grid = item["video_grid_thw"].data.tolist()
            return Qwen3VLMultiModalProcessor.get_video_repl(
                tokens_per_frame=lumped(plan.count(grid), int(grid[0])),
                timestamps=item["timestamps"].data,
                tokenizer=tokenizer,
                vision_start_token_id=hf_config.vision_start_token_id,
                vision_end_token_id=hf_config.vision_end_token_id,
                video_token_id=hf_config.video_token_id,
                select_token_id=False,  # the whole span is embedding rows, as for vLLM's EVS
            )

        return [
            PromptReplacement(modality="video", target=u.target, replacement=video_groups)
            if u.modality == "video"
            else u
            for u in updates
        ]


@MULTIMODAL_REGISTRY.register_processor(
    TokenCompressQwen3_VLProcessor,
    info=Qwen3VLProcessingInfo,
    dummy_inputs=Qwen3VLDummyInputsBuilder,
)
class TokenCompressQwen3_VL(ServedModel, Qwen3VLForConditionalGeneration):
    """vLLM's Qwen3-VL whose video token selection is a tokencompress pipeline's."""

    def __init__(self, *, vllm_config: Any, prefix: str = "model") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._carry_plan()

    def _postprocess_video_embeds_evs(
        self, video_embeds_split: tuple[torch.Tensor, ...], video_input: Any
    ) -> tuple[torch.Tensor, ...]:
        plan = self.tokencompress_plan
        if plan is None:
            return super()._postprocess_video_embeds_evs(video_embeds_split, video_input)
        timestamps = video_input.timestamps
        if timestamps is None:  # as vLLM's EVS path: the groups' text needs them
            raise ValueError("video timestamps are required when a tokencompress pipeline prunes videos")
        merge = self.visual.spatial_merge_size
        dim = self.visual_dim  # main features; DeepStack levels follow in the same row
        out = []
        for emb, grid, times in zip(
            video_embeds_split, video_input["video_grid_thw"].tolist(), timestamps, strict=True
        ):
            t, h, w = (int(v) for v in grid)
            per = (h // merge) * (w // merge)
            chosen = plan.select(emb[:, :dim], grid)
            index = chosen.index.to(emb.device)
            mask = torch.zeros(t * per, dtype=torch.bool, device=emb.device)
            mask[index] = True
            kept = torch.cat([chosen.tokens.to(emb.dtype), emb[index, dim:]], dim=1)
            self._record(grid, chosen.index)
            out.append(
                self._create_final_video_embeddings(
                    video_embeddings=kept,
                    num_tokens_per_frame=torch.bincount(index // per, minlength=t).tolist(),
                    timestamps=times,
                    video_grid_thw=[t, h, w],
                    retention_mask=mask,
                )
            )
        return tuple(out)

    def get_mrope_input_positions(
        self, input_tokens: list[int], mm_features: list[Any]
    ) -> tuple[torch.Tensor, int]:
        """vLLM's positions of the prompt as written; a video whose planned count is below one
        slice's tokens gets, from vLLM's rule, a whole slice's columns for its first group: those
        surplus columns are dropped (``recompute_mrope_positions`` then places the kept tokens)."""
        positions, delta = super().get_mrope_input_positions(input_tokens, mm_features)
        if self.tokencompress_plan is None or positions.shape[1] == len(input_tokens):
            return positions, delta
        merge = self.config.vision_config.spatial_merge_size
        spans = []
        for f in mm_features:
            if f.modality == "video":
                _, h, w = (int(v) for v in f.data["video_grid_thw"].data.tolist())
                spans.append((f.mm_position.offset, f.mm_position.length, (h // merge) * (w // merge)))
        keep = torch.ones(positions.shape[1], dtype=torch.bool)
        keep[surplus_columns(input_tokens, self.config.video_token_id, spans)] = False
        positions = positions[:, keep]
        if positions.shape[1] != len(input_tokens):
            raise RuntimeError(
                f"{positions.shape[1]} M-RoPE positions for a prompt of {len(input_tokens)} tokens"
            )
        return positions, int(positions.max()) + 1 - len(input_tokens)

    def recompute_mrope_positions(
        self,
        input_ids: list[int] | torch.Tensor,
        multimodal_embeddings: Sequence[torch.Tensor],
        mrope_positions: torch.LongTensor,
        num_computed_tokens: int,
    ) -> tuple[Sequence[torch.Tensor], torch.Tensor, int]:
        if self.tokencompress_plan is not None:
            c = self.config
            inner = {c.image_token_id, c.video_token_id, c.vision_end_token_id}
            ids = input_ids.tolist() if isinstance(input_ids, torch.Tensor) else input_ids
            fixed = outer_starts_as_text(ids, c.vision_start_token_id, inner)
            if isinstance(input_ids, torch.Tensor):
                input_ids = torch.tensor(fixed, dtype=input_ids.dtype, device=input_ids.device)
            else:
                input_ids = fixed
        return super().recompute_mrope_positions(
            input_ids, multimodal_embeddings, mrope_positions, num_computed_tokens
        )
