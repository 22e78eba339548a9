"""Shared base of the Qwen2-VL and Qwen2.5-VL targets (LiveCC's base model family).

Token geometry. Two consecutive frames form one *temporal
slice*; a slice of an ``H × W`` px frame pair has ``h·w = (H/14)(W/14)`` ViT tokens and,
after the 2×2 PatchMerger, ``h'·w' = h·w/4`` LLM tokens. Every stage's "frame" (a row of
:class:`VisualTokens`, a unit of per-frame budgets) is therefore a slice, and
``frame`` counts slices in the stream.

Resolution. Qwen natively resizes each video to its own aspect ratio, but a stream needs one
token grid from start to end (per-frame budgets, planned counts, one cached reference per
position), and the pipeline checks budgets before any frame arrives. Frames are therefore
resized to one size per target: the smart-resize of ``frame_size`` (the source video's size,
to keep its aspect ratio as LiveCC does) or, by default, of a square at ``max_pixels``.

Stream layout. Each chunk is wrapped in its own ``<|vision_start|> … <|vision_end|>``, as
LiveCC feeds every 2-frame chunk as a new video in its conversation; the two delimiter tokens
are prefilled with the chunk. Their positions, the visual tokens' 3-D M-RoPE positions and
where text continues all come from the installed model's ``get_rope_index`` (see
:mod:`.qwen_mrope`), gathered for the kept tokens by ``tokens.source``, so a pruned token keeps
exactly the (t, h, w) position it had in the unpruned layout.

Strategies inside the tower (:mod:`.qwen_vision_block`): the block adapter runs any token
subset at chosen positions (``SUBSET_ATTENTION``: ToMe's merged tokens at their anchors'
rotary (h, w) and window; the merger still gets the full grid, ToMe un-merges after every
block), and recomputes a probed block's rotary, windowed attention and keys (``ATTENTION``,
``KEYS``), which VisionZip carries onto the merged grid with :meth:`QwenVLTarget.prefill_grid_map`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from ...api.block_adapter import BlockAdapter
from ...api.target import LLMState, StageRunner, Target, TargetOptions
from ...api.tokens import VisualTokens
from ...api.types import Capability, ChunkInfo, Stage, StageInfo
from .qwen_layout import ChunkLayout, LayoutSlot, merge_block_positions
from .qwen_mrope import chunk_positions
from .qwen_patches import CLIP_MEAN, CLIP_STD, fit_to_grid, frames_to_patches
from .qwen_vision_block import QwenVisionBlockAdapter

__all__ = ["QwenVLOptions", "QwenVLTarget"]


class QwenVLOptions(TargetOptions):
    max_pixels: int = Field(
        448 * 448,
        gt=0,
        description="Upper bound on the pixels of one frame after resizing (448x448 gives 16x16 = 256 LLM "
        "tokens per 2-frame slice; LiveCC allows up to 384*28*28).",
    )
    min_pixels: int = Field(
        56 * 56, gt=0, description="Lower bound on the pixels of one frame after resizing."
    )
    frame_size: tuple[int, int] | None = Field(
        None,
        description="(height, width) of the source video: frames are resized to its smart-resized size, "
        "keeping its aspect ratio. Default: a square frame of max_pixels.",
    )

    @model_validator(mode="after")
    def _bounds(self) -> QwenVLOptions:
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels ({self.min_pixels}) is larger than max_pixels ({self.max_pixels})")
        return self


class QwenVLTarget(Target):
    """Qwen-VL family: packed vision tower with 2-D rotary, 2×2 PatchMerger, 3-D M-RoPE LLM."""

    Options = QwenVLOptions
    provides = {
        # Rotary attention is not position-free, but the adapter places any token subset at chosen
        # positions (merged tokens at their anchor's (h, w) and window): SUBSET_ATTENTION.
        Stage.PRE_VIT_BLOCK: frozenset({Capability.BLOCK_ADAPTER, Capability.SUBSET_ATTENTION}),
        Stage.POST_VIT: frozenset(),
        # a probed layer's attention (rotary, windows) and keys, carried onto the merged grid
        Stage.PRE_PREFILL: frozenset({Capability.ATTENTION, Capability.KEYS}),
        # M-RoPE: queries and keys are readable pre-RoPE; positions are 3-D (rekv and streamingtom_oqm
        # re-place retrieved frames with tokencompress.api.memory_positions).
        Stage.KV_CACHE: frozenset({Capability.PRE_ROPE_PROJECTIONS}),
    }
    tokenizer_layout = "qwen2_vl"
    kv_cache_strategies = frozenset({"infinipot_v", "rekv", "sliding_window", "streamingtom_oqm"})
    pixel_mean: ClassVar[tuple[float, float, float]] = CLIP_MEAN
    pixel_std: ClassVar[tuple[float, float, float]] = CLIP_STD
    """The image processor's normalisation (CLIP's for Qwen2/2.5-VL)."""
    windowed: ClassVar[bool] = False
    """True when the tower packs tokens in window order (Qwen2.5-VL)."""

    def __init__(self, model: nn.Module, options: TargetOptions | None = None) -> None:
        super().__init__(model, options)
        self._slot = LayoutSlot()
        vc = self._vcfg
        opts: QwenVLOptions = self.options  # type: ignore[assignment]
        side = math.isqrt(opts.max_pixels)
        height, width = opts.frame_size or (side, side)
        # (H, W) px every frame of every stream is resized to
        self.frame_hw = fit_to_grid(
            height, width, vc.patch_size * vc.spatial_merge_size, opts.min_pixels, opts.max_pixels
        )

    # ------------------------------------------------------------ geometry
    @property
    def _vcfg(self) -> Any:
        return self.model.config.vision_config

    @property
    def _visual(self) -> nn.Module:
        return self.model.model.visual

    @property
    def merge(self) -> int:
        return int(self._vcfg.spatial_merge_size)

    @property
    def vit_grid(self) -> tuple[int, int]:
        """ViT patches (rows, cols) of one slice."""
        p = self._vcfg.patch_size
        return self.frame_hw[0] // p, self.frame_hw[1] // p

    @property
    def merged_grid(self) -> tuple[int, int]:
        """LLM tokens (rows, cols) of one slice."""
        h, w = self.vit_grid
        return h // self.merge, w // self.merge

    def token_frames(self, frames: int) -> int:
        """Temporal slices a chunk of ``frames`` frames makes (a trailing odd frame is repeated)."""
        return -(-frames // int(self._vcfg.temporal_patch_size))

    def stage_info(self) -> dict[Stage, StageInfo]:
        h, w = self.vit_grid
        mh, mw = self.merged_grid
        vit_dim = self._visual.blocks[0].attn.qkv.in_features
        llm_dim = self.model.config.get_text_config().hidden_size
        return {
            Stage.PRE_VIT_BLOCK: StageInfo(Stage.PRE_VIT_BLOCK, h * w, vit_dim, (h, w), count_locked=True),
            Stage.POST_VIT: StageInfo(Stage.POST_VIT, h * w, vit_dim, (h, w), count_locked=True),
            Stage.PRE_PREFILL: StageInfo(Stage.PRE_PREFILL, mh * mw, llm_dim, (mh, mw)),
        }

    def vit_layers(self) -> Sequence[nn.Module]:
        return list(self._visual.blocks)

    def block_adapter(self, layer: nn.Module) -> BlockAdapter:
        return QwenVisionBlockAdapter(layer, self._slot, windowed=self.windowed)

    def chunk_layout(self, grid_thw: Tensor) -> ChunkLayout:
        """The packed ↔ frames map of a chunk with ViT grid ``grid_thw`` ``[[t, h, w]]``."""
        return ChunkLayout.build(grid_thw, self._vcfg, self.windowed)

    def using_layout(self, layout: ChunkLayout) -> Any:
        """Context manager publishing ``layout`` to this target's block adapters (encode() does it)."""
        return self._slot.use(layout)

    # ---------------------------------------------------------------- frames
    def preprocess(self, frames: Sequence[np.ndarray] | np.ndarray | Tensor) -> Tensor:
        """uint8 RGB frames → ``pixel_values_videos`` ``[t·h·w, 3·2·14·14]`` (merge-block order)."""
        vc = self._vcfg
        pixels, _ = frames_to_patches(
            frames,
            self.frame_hw,
            vc.patch_size,
            vc.spatial_merge_size,
            vc.temporal_patch_size,
            dtype=self._visual.patch_embed.proj.weight.dtype,
            device=self.device,
            mean=self.pixel_mean,
            std=self.pixel_std,
        )
        return pixels

    def grid_thw(self, pixels: Tensor) -> Tensor:
        """``video_grid_thw`` ``[[t, h, w]]`` of preprocessed ``pixels``."""
        h, w = self.vit_grid
        return torch.tensor([[pixels.shape[0] // (h * w), h, w]], device=pixels.device)

    # ---------------------------------------------------------------- vision
    @torch.inference_mode()
    def encode(self, pixels: Tensor, chunk: ChunkInfo, run_stage: StageRunner) -> VisualTokens:
        """Tower → post_vit (merge-block order, count-locked) → PatchMerger → pre_prefill (raster)."""
        visual = self._visual
        grid = self.grid_thw(pixels)
        t, h, w = (int(v) for v in grid[0].tolist())
        layout = self.chunk_layout(grid)
        with self.using_layout(layout):
            out = visual(pixels, grid_thw=grid)
        first = chunk.first_token_frame if chunk.first_token_frame is not None else chunk.first_frame
        # last_hidden_state is the tower's packed output before the merger; Qwen2.5-VL leaves it in
        # window order (only the merged output is un-permuted), so the layout restores block order.
        vit = layout.to_frames(out.last_hidden_state)  # [t, h*w, C]
        post = VisualTokens.from_frames(vit, (h, w), first)
        post = replace(post, pos=merge_block_positions(h, w, self.merge, vit.device).repeat(t, 1))
        kept = run_stage(Stage.POST_VIT, post)
        if kept is post:
            merged = out.pooler_output  # the model's own merger output, row-major on the merged grid
        else:
            if not kept.is_full_grid():
                raise RuntimeError(
                    f"{self.name} merges 2x2 blocks: post_vit strategies must keep every token"
                )
            merged = visual.merger(kept.tokens)  # rows are still in merge-block order
        mh, mw = h // self.merge, w // self.merge
        pre = VisualTokens.from_frames(merged.reshape(t, mh * mw, -1), (mh, mw), first)
        return run_stage(Stage.PRE_PREFILL, pre)

    def prefill_grid_map(self) -> Callable[[Tensor], Tensor]:
        """Mean over each merge block: ``[F, h·w, K]`` (block order) → ``[F, h'·w', K]`` (row-major).

        The merger is an MLP over the concatenated ``m²`` patches, not a pool, so there is no exact
        image of a per-patch quantity; the mean is the rule (VisionZip's scores and keys: a merged
        token is scored by the mean of its patches' scores, and compared by their mean key)."""
        unit = self.merge**2

        def to_merged(x: Tensor) -> Tensor:
            f, t, k = x.shape
            return x.reshape(f, t // unit, unit, k).mean(dim=2)

        return to_merged

    # -------------------------------------------------------------- LLM side
    def rope_index_kwargs(self) -> dict[str, Any]:
        """Extra ``get_rope_index`` arguments for one chunk (one video group)."""
        return {}

    def _delimiters(self) -> Tensor:
        cfg = self.model.config
        return torch.tensor([cfg.vision_start_token_id, cfg.vision_end_token_id], device=self.device)

    def kv_extra_tokens_per_chunk(self) -> int:
        return 2  # <|vision_start|> and <|vision_end|>

    def visual_row_mask(self, state: LLMState, tokens: VisualTokens) -> Tensor:
        """``<|vision_start|>``, the chunk's visual tokens, ``<|vision_end|>``."""
        mask = torch.ones(tokens.count + 2, dtype=torch.bool)
        mask[0] = mask[-1] = False
        return mask

    def visual_embeds(self, tokens: VisualTokens) -> Tensor:
        """``[1 + N + 1, D]``: the chunk's tokens between ``<|vision_start|>`` and ``<|vision_end|>``."""
        ends = self.embed(self._delimiters()).to(self.dtype)
        return torch.cat([ends[:1], tokens.tokens.to(ends), ends[1:]]).contiguous()

    def visual_positions(self, state: LLMState, tokens: VisualTokens) -> Tensor:
        """``(3, 1, 1 + N + 1)`` positions of :meth:`visual_embeds`; advances the counter past the chunk."""
        mh, mw = tokens.grid
        grid = torch.tensor([[tokens.num_frames, mh * self.merge, mw * self.merge]], device=self.device)
        cp = chunk_positions(self.model.model, grid, state.next_position, self.rope_index_kwargs())
        kept = cp.vision[:, tokens.source.to(cp.vision.device)]
        state.next_position = cp.next_position
        return torch.cat([cp.start[:, None], kept, cp.end[:, None]], dim=1)[:, None]

    def text_positions(self, state: LLMState, n: int) -> Tensor:
        """``(3, 1, n)``: text tokens sit at the same position on all three M-RoPE axes."""
        return super().text_positions(state, n)[None].expand(3, -1, -1)

    @torch.inference_mode()
    def greedy_decode(
        self, state: LLMState, logits: Tensor, max_new_tokens: int, stop_ids: set[int]
    ) -> list[int]:
        """Decode with explicit positions, the model's ``rope_deltas`` set to this stream's offset.

        Every step passes its 3-D positions to the bare language model, which never reads
        ``rope_deltas``; the stock multimodal forward would (position = cache length + delta), so
        while this stream decodes it holds the value that agrees with the explicit positions, and
        the previous value comes back afterwards (the model is shared; streams must not leak).
        """
        inner = self.model.model
        saved = inner.rope_deltas
        inner.rope_deltas = torch.tensor([[state.next_position - state.length]], device=self.device)
        try:
            return super().greedy_decode(state, logits, max_new_tokens, stop_ids)
        finally:
            inner.rope_deltas = saved
