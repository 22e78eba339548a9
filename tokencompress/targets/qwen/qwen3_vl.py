"""Target for ``Qwen3VLForConditionalGeneration`` .

The vision side is the Qwen2-VL layout (packed ``[N, C]`` blocks with ``cu_seqlens`` per
temporal slice, 2-D rotary, 2×2 merger), plus a learned position table the tower adds before
its first block, so the Qwen block adapter and chunk layout serve unchanged. Two things differ:

* **Per-slice groups with timestamps.** The stock processor writes every temporal slice as its
  own ``<t seconds><|vision_start|> pads <|vision_end|>`` group, and ``get_rope_index`` splits a
  video grid into ``t = 1`` grids. Each chunk is prefilled the same way, so chunking at slice
  boundaries gives the very layout of a one-shot video. The timestamp is the mean time of the
  slice's first and last frame (a trailing odd frame is repeated, as the processor does), at
  the stream's fps. Its text needs the stream's tokenizer; a stream without one (ids only) gets
  no timestamp text, and everything else stays as it is.
* **DeepStack.** The outputs of the blocks listed in ``deepstack_visual_indexes`` go through
  their own mergers and are added to the LLM hidden states at the visual positions after the
  first decoder layers. The features of a chunk ride on the token carrier
  (:class:`DeepStackTokens`, unpruned, ``[N0, D]`` each) and are gathered by the kept rows'
  ``source`` at prefill: whatever a pre_prefill strategy selected, every DeepStack stream gets
  the same rows. A merged row carries its representative's DeepStack features.

Positions come from the installed model's ``get_rope_index`` (interleaved M-RoPE is applied by
the LLM from the 3-D ids) on the chunk's unpruned layout, shifted to the stream's counter and
gathered for the kept tokens, as on Qwen2-VL.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

from ...api.in_decoder import DecoderStack
from ...api.prefill_segment import PrefillSegment
from ...api.target import LLMState, StageRunner, TargetOptions, cache_argument
from ...api.tokens import VisualTokens
from ...api.types import ChunkInfo, Stage, StreamConfig
from .qwen_vl_base import QwenVLOptions, QwenVLTarget

__all__ = ["DeepStackTokens", "Qwen3VLOptions", "Qwen3VLTarget", "slice_groups_positions", "with_deepstack"]

QWEN3_MEAN = (0.5, 0.5, 0.5)
QWEN3_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class DeepStackTokens(VisualTokens):
    """The carrier of a Qwen3-VL chunk: :class:`VisualTokens` plus what stays unpruned beside it.

    ``take``/``merge``/``with_tokens`` rebuild the carrier with ``dataclasses.replace``, so both
    extra fields survive any strategy untouched; the target gathers them by ``source``.
    """

    deepstack: tuple[Tensor, ...] = ()
    """``[N0, D]`` per DeepStack layer, rows in the order of the chunk's original tokens."""
    timestamps: tuple[float, ...] = ()
    """Seconds of every temporal slice of the chunk (one per ``num_frames``)."""

    def deepstack_kept(self) -> list[Tensor]:
        """``[N, D]`` per DeepStack layer for the rows held now."""
        return [d.index_select(0, self.source.to(d.device)) for d in self.deepstack]


def with_deepstack(
    tokens: VisualTokens, deepstack: tuple[Tensor, ...], timestamps: tuple[float, ...]
) -> DeepStackTokens:
    """``tokens`` (a fresh, unpruned carrier) as a :class:`DeepStackTokens` with these extras."""
    fields = {f: getattr(tokens, f) for f in VisualTokens.__dataclass_fields__}
    return DeepStackTokens(**fields, deepstack=deepstack, timestamps=timestamps)


class Qwen3VLOptions(QwenVLOptions):
    max_pixels: int = Field(
        448 * 448,
        gt=0,
        description="Upper bound on the pixels of one frame after resizing (448x448 gives 14x14 = 196 LLM "
        "tokens per 2-frame slice with Qwen3-VL's 16-px patches).",
    )
    timestamps: bool = Field(
        True,
        description="Prefill '<t seconds>' text before every temporal slice's vision group, as the stock "
        "processor does (needs the stream's tokenizer; streams without one get none).",
    )


def slice_groups_positions(
    model: Any, grid_thw: Tensor, offset: int, text_lengths: Sequence[int]
) -> tuple[list[Tensor], int]:
    """Positions of ``t`` slice groups ``<text × L_j> <vs> pads <ve>``, from the model's own rule.

    ``model`` is the inner ``Qwen3VLModel``; ``grid_thw`` ``[[t, h, w]]`` the chunk's ViT grid;
    ``text_lengths`` the timestamp tokens before each slice. Returns one ``[3, L_j + n + 2]``
    tensor per slice (text, start, ``n`` visual tokens row-major, end) and where the next text
    token goes. The synthetic row ends in one text token that tells it; the rule is translation
    invariant, so it is computed from 0 and shifted to ``offset``.
    """
    cfg = model.config
    merge = cfg.vision_config.spatial_merge_size
    t, h, w = (int(v) for v in grid_thw[0].tolist())
    n = (h // merge) * (w // merge)
    dev = grid_thw.device
    ids, types = [], []
    for length in text_lengths:
        ids += (
            [0] * length + [cfg.vision_start_token_id] + [cfg.video_token_id] * n + [cfg.vision_end_token_id]
        )
        types += [0] * (length + 1) + [2] * n + [0]
    ids.append(0)
    types.append(0)
    pos, _ = model.get_rope_index(
        torch.tensor([ids], device=dev),
        mm_token_type_ids=torch.tensor([types], dtype=torch.int, device=dev),
        video_grid_thw=grid_thw,
    )
    pos = pos[:, 0] + offset
    after = pos[:, -1]
    if not bool((after == after[0]).all()):
        raise RuntimeError(f"get_rope_index gave a text token unequal t/h/w positions {after.tolist()}")
    groups, start = [], 0
    for length in text_lengths:
        size = length + n + 2
        groups.append(pos[:, start : start + size])
        start += size
    return groups, int(after[0])


class Qwen3VLTarget(QwenVLTarget):
    name = "qwen3_vl"
    summary = "Qwen3-VL: packed ViT (learned positions + 2-D rotary), per-slice timestamped groups, DeepStack"
    Options = Qwen3VLOptions
    pixel_mean = QWEN3_MEAN  # Qwen3-VL's processor normalises with 0.5 / 0.5
    pixel_std = QWEN3_STD

    def __init__(self, model: nn.Module, options: TargetOptions | None = None) -> None:
        super().__init__(model, options)
        self._fps = 2.0

    @classmethod
    def matches(cls, model: Any) -> bool:
        from transformers import Qwen3VLForConditionalGeneration

        return isinstance(model, Qwen3VLForConditionalGeneration)

    @classmethod
    def tiny_model(cls, seed: int = 0) -> nn.Module:
        """2 blocks of width 32 (DeepStack after block 0), 2-layer LLM of width 64."""
        from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

        config = Qwen3VLConfig(
            text_config=dict(
                hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, vocab_size=1000, max_position_embeddings=4096,
                bos_token_id=None, eos_token_id=None,
                rope_parameters={
                    "rope_type": "default", "rope_theta": 5e6, "mrope_section": [2, 3, 3], "mrope_interleaved": True
                },
            ),
            vision_config=dict(
                depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16, spatial_merge_size=2,
                temporal_patch_size=2, out_hidden_size=64, num_position_embeddings=64, deepstack_visual_indexes=[0],
            ),
            image_token_id=995, video_token_id=996, vision_start_token_id=997, vision_end_token_id=998,
        )  # fmt: skip
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return Qwen3VLForConditionalGeneration(config).eval()

    def configure_stream(self, stream: StreamConfig) -> None:
        self._fps = float(stream.fps)

    def decoder_stack(self) -> DecoderStack | None:
        """DeepStack adds features at the visual rows after the first decoder layers, on the
        full-length sequence: an in_decoder drop must come after the last of them."""
        stack = super().decoder_stack()
        depth = len(getattr(self.model.config.vision_config, "deepstack_visual_indexes", None) or ())
        if stack is None or not depth:
            return stack
        why = f"DeepStack adds visual features after each of the first {depth} decoder layers"
        return replace(stack, first_droppable=depth, why_first=why)

    def slice_times(self, first_frame: int, num_frames: int) -> tuple[float, ...]:
        """Seconds of every slice of a chunk: mean time of its first and last (repeated) frame."""
        tp = int(self._vcfg.temporal_patch_size)
        last = first_frame + num_frames - 1
        times = []
        for j in range(self.token_frames(num_frames)):
            a = first_frame + j * tp
            b = min(a + tp - 1, last)
            times.append((a + b) / 2 / self._fps)
        return tuple(times)

    # ---------------------------------------------------------------- vision
    @torch.inference_mode()
    def encode(self, pixels: Tensor, chunk: ChunkInfo, run_stage: StageRunner) -> VisualTokens:
        """The Qwen-VL vision path, with each DeepStack merger's output recorded on the carrier."""
        mergers = list(self._visual.deepstack_merger_list)
        outputs: list[Tensor | None] = [None] * len(mergers)
        thread = threading.get_ident()

        def recorder(k: int) -> Callable[..., None]:
            def hook(_module: nn.Module, _args: Any, out: Tensor) -> None:
                if threading.get_ident() == thread:
                    outputs[k] = out

            return hook

        times = self.slice_times(chunk.first_frame, chunk.num_frames)

        def stage(st: Stage, tokens: VisualTokens) -> VisualTokens:
            if st is Stage.PRE_PREFILL:
                if any(o is None for o in outputs):
                    raise RuntimeError("qwen3_vl: a DeepStack merger did not run in this chunk")
                deep = tuple(o.reshape(tokens.count, -1) for o in outputs)  # type: ignore[union-attr]
                tokens = with_deepstack(tokens, deep, times)
            return run_stage(st, tokens)

        handles = [m.register_forward_hook(recorder(k)) for k, m in enumerate(mergers)]
        try:
            return super().encode(pixels, chunk, stage)
        finally:
            for h in handles:
                h.remove()

    # -------------------------------------------------------------- LLM side
    def _timestamp_ids(self, state: LLMState | None, tokens: VisualTokens) -> list[Tensor]:
        """Token ids of every slice's timestamp text (empty without a tokenizer or timestamps)."""
        empty = torch.zeros(0, dtype=torch.long, device=self.device)
        tokenizer = getattr(state, "tokenizer", None)
        times = getattr(tokens, "timestamps", ())
        if tokenizer is None or not self.options.timestamps or not times:  # type: ignore[attr-defined]
            return [empty] * tokens.num_frames
        return [
            torch.tensor(tokenizer.encode(f"<{t:.1f} seconds>", add_special_tokens=False), device=self.device)
            for t in times
        ]

    def _grid_of(self, tokens: VisualTokens) -> Tensor:
        mh, mw = tokens.grid
        return torch.tensor([[tokens.num_frames, mh * self.merge, mw * self.merge]], device=self.device)

    def _slice_rows(self, tokens: VisualTokens) -> list[Tensor]:
        """Row indices of the carrier held by each slice (rows are slice-major)."""
        counts = tokens.counts().tolist()
        starts = np.cumsum([0, *counts])
        return [
            torch.arange(int(starts[j]), int(starts[j + 1]), device=self.device) for j in range(len(counts))
        ]

    def visual_positions(self, state: LLMState, tokens: VisualTokens) -> Tensor:
        """``(3, 1, L)`` positions of the chunk's groups (timestamp, start, kept tokens, end)."""
        ts = self._timestamp_ids(state, tokens)
        groups, nxt = slice_groups_positions(
            self.model.model, self._grid_of(tokens), state.next_position, [t.numel() for t in ts]
        )
        local = tokens.source.to(self.device) % tokens.tokens_per_frame_in  # slice-local raster index
        parts = []
        for j, (g, rows) in enumerate(zip(groups, self._slice_rows(tokens), strict=True)):
            lead = ts[j].numel() + 1
            parts += [g[:, :lead], g[:, lead + local[rows]], g[:, -1:]]
        state.next_position = nxt
        return torch.cat(parts, dim=1)[:, None]

    def _chunk_embeds(self, state: LLMState | None, tokens: VisualTokens) -> tuple[Tensor, Tensor]:
        """``([L, D]`` embeddings of the chunk's groups, ``[L]`` bool mask of the visual rows)."""
        ts = self._timestamp_ids(state, tokens)
        ends = self.embed(self._delimiters()).to(self.dtype)
        feats = tokens.tokens.to(ends)
        parts, mask = [], []
        for j, rows in enumerate(self._slice_rows(tokens)):
            text = self.embed(ts[j]).to(self.dtype)
            parts += [text, ends[:1], feats[rows], ends[1:]]
            mask += [False] * (text.shape[0] + 1) + [True] * rows.numel() + [False]
        return torch.cat(parts).contiguous(), torch.tensor(mask, device=self.device)

    def visual_row_mask(self, state: LLMState, tokens: VisualTokens) -> Tensor:
        """Per group: timestamp text and ``<|vision_start|>`` (False), its rows (True), ``<|vision_end|>``."""
        ts = self._timestamp_ids(state, tokens)
        mask: list[bool] = []
        for j, rows in enumerate(self._slice_rows(tokens)):
            mask += [False] * (ts[j].numel() + 1) + [True] * rows.numel() + [False]
        return torch.tensor(mask, dtype=torch.bool)

    def visual_embeds(self, tokens: VisualTokens) -> Tensor:
        """Embeddings of the chunk's groups without timestamp text (see :meth:`prefill_visual`)."""
        return self._chunk_embeds(None, tokens)[0]

    @torch.no_grad()
    def visual_segment(self, state: LLMState, tokens: VisualTokens) -> PrefillSegment:
        """The chunk's groups with their positions, visual-row mask and the kept rows' DeepStack features."""
        deepstack = getattr(tokens, "deepstack", None)
        if not deepstack and self._visual.deepstack_visual_indexes:
            raise RuntimeError(
                "qwen3_vl: the pre_prefill tokens lost their DeepStack features; a strategy must build its "
                "output with tokens.take()/tokens.merge()/tokens.with_tokens(), not a new VisualTokens"
            )
        embeds, mask = self._chunk_embeds(state, tokens)
        positions = self.visual_positions(state, tokens)
        kept = tokens.deepstack_kept() if isinstance(tokens, DeepStackTokens) else []
        return PrefillSegment(embeds, positions, tokens.count, mask, tuple(kept))

    @torch.inference_mode()
    def prefill_segments(self, state: LLMState, segments: Sequence[PrefillSegment]) -> None:
        """One decoder call; DeepStack features of the visual rows join after the first layers."""
        seg = PrefillSegment.concat(segments)
        if state.position_log is not None:
            state.position_log.append(seg.positions.reshape(-1, seg.positions.shape[-1]).detach())
        lm = self.language_model
        mask = seg.visual_mask if seg.visual_mask is not None else torch.zeros(seg.length, dtype=torch.bool)
        lm(
            inputs_embeds=seg.embeds[None].to(self.dtype),
            position_ids=seg.positions,
            **{cache_argument(lm): state.cache},
            use_cache=True,
            visual_pos_masks=mask[None].to(self.device),
            deepstack_visual_embeds=[d.to(self.dtype) for d in seg.extras] if seg.extras else None,
        )
        state.visual_tokens += seg.visual

    def prefill_visual(self, state: LLMState, tokens: VisualTokens) -> None:
        """Prefill the chunk's groups; DeepStack features of the kept rows join after the first layers."""
        self.prefill_segments(state, [self.visual_segment(state, tokens)])
