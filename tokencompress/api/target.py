"""Target base: everything model-specific the framework needs, behind one small interface.

A target knows one VideoLLM family in transformers 5: how to recognise it, where its encoder
layers are (and a :class:`BlockAdapter` for them), how frames become pixel values, how the
vision path runs with the stage callbacks in between, and how visual and text embeddings are
prefilled into a ``DynamicCache`` with explicit positions. The LLM half below is shared by
every decoder with 1-D RoPE; targets with other position schemes override the position
methods.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn
from transformers import DynamicCache

from .block_adapter import BlockAdapter
from .in_decoder import DecoderStack
from .kv_cache import DecoderLayout
from .prefill_segment import PrefillSegment
from .tokens import VisualTokens
from .types import Capability, ChatFormat, ChunkInfo, Stage, StageInfo, StreamConfig

__all__ = ["Target", "TargetOptions", "LLMState", "StageRunner"]

StageRunner = Callable[[Stage, VisualTokens], VisualTokens]
"""Applies the pipeline's strategies of one stage; the target calls it at the right place."""


def cache_argument(module: nn.Module) -> str:
    """The name a decoder's forward gives its KV cache: ``cache`` from transformers 5.24 on,
    ``past_key_values`` before (an unknown keyword would be swallowed and the cache ignored)."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


class TargetOptions(BaseModel):
    """Base of target options given as ``target_options`` in the pipeline YAML."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class LLMState:
    """A stream's language-model side: its KV cache and the next logical position.

    The position counter is separate from the cache length because pruned or evicted tokens
    leave the cache shorter than the positions already used (docs/design.md §4).
    """

    cache: DynamicCache
    next_position: int = 0
    visual_tokens: int = 0
    tokenizer: Any = None
    """The stream's tokenizer, for targets that put text inside a visual chunk (Qwen3-VL timestamps)."""
    position_log: list[Tensor] | None = None
    """When a kv_cache memory sets it, every prefill appends its position ids here (memories that
    renumber positions need them: under M-RoPE a token's position is not its cache index)."""
    in_decoder: Any = None
    """The in_decoder stage's :class:`~tokencompress.api.in_decoder.InDecoderState` for this stream
    (None without an in_decoder strategy); a field, so a chunk's snapshot copies it."""

    @property
    def length(self) -> int:
        return self.cache.get_seq_length()


class Target(ABC):
    """One model family. Instances wrap one loaded model; they hold no per-stream data."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    Options: ClassVar[type[TargetOptions]] = TargetOptions
    provides: ClassVar[dict[Stage, frozenset[Capability]]] = {}
    """What each stage can offer to strategies (checked against ``Strategy.needs``)."""
    tokenizer_layout: ClassVar[str] = "llava_onevision"
    """Placeholder tokens a fallback tokenizer needs for this family (see :mod:`tokencompress.models.tokenizer`)."""
    system_prompt: ClassVar[str] = "You are a helpful assistant."
    kv_cache_strategies: ClassVar[frozenset[str]] = frozenset()
    """Names of the ``kv_cache`` strategies this target can run; a pipeline refuses the others."""
    kv_cache_refusals: ClassVar[dict[str, str]] = {}
    """Why a kv_cache strategy is not supported, by name (appended to the build-time error)."""

    def __init__(self, model: nn.Module, options: TargetOptions | None = None) -> None:
        self.model = model
        self.options = options if options is not None else self.Options()

    # ------------------------------------------------------------ vision side
    @classmethod
    @abstractmethod
    def matches(cls, model: Any) -> bool:
        """True if this target knows ``model`` (used by ``target: auto``)."""

    @classmethod
    def tiny_model(cls, seed: int = 0) -> nn.Module:
        """A tiny random-weight model of this family built from a config (no download).

        The strategy × target conformance matrix builds one per registered target, so a
        third-party target is covered by the same tests once it implements this.
        """
        raise NotImplementedError(f"target '{cls.name}' offers no tiny model for conformance tests")

    def token_frames(self, frames: int) -> int:
        """Token frames (rows of the frame axis of :class:`VisualTokens`, the unit of per-frame
        budgets) that a chunk of ``frames`` video frames yields: the same number unless the
        encoder fuses frames (Qwen-VL: 2 per temporal slice)."""
        return frames

    @abstractmethod
    def stage_info(self) -> dict[Stage, StageInfo]:
        """Token layout at every stage, for build-time budget and shape checks."""

    @abstractmethod
    def vit_layers(self) -> Sequence[nn.Module]:
        """The encoder layers, in order, as the modules the model calls."""

    @abstractmethod
    def block_adapter(self, layer: nn.Module) -> BlockAdapter:
        """A :class:`BlockAdapter` over one of :meth:`vit_layers`."""

    @abstractmethod
    def preprocess(self, frames: Sequence[np.ndarray] | np.ndarray | Tensor) -> Tensor:
        """uint8 RGB frames (``[F, H, W, 3]``, or a list of ``[H, W, 3]`` whose sizes may differ)
        to the vision tower's pixel input (see :func:`tokencompress.media.frames.resize_frames`)."""

    @abstractmethod
    def encode(self, pixels: Tensor, chunk: ChunkInfo, run_stage: StageRunner) -> VisualTokens:
        """Run the vision path of one chunk, calling ``run_stage`` at post_vit and pre_prefill.

        Returns the visual tokens in LLM width, ready for :meth:`prefill_visual`.
        """

    def configure_stream(self, stream: StreamConfig) -> None:  # noqa: B027 - optional hook
        """Learn the pipeline's stream shape (fps, frames per chunk) when the pipeline is bound."""

    def vision_module(self) -> nn.Module | None:
        """The module whose calls are the ViT proper: patch embedding in, projector and pooling out.

        This is the seam benchmarks count "ViT" FLOPs through (``tokencompress.bench`` hooks its
        forward while counting). The default is the outermost module that holds
        :meth:`vit_layers` but not the language model (SigLIP tower, Qwen-VL ``visual``); a
        target whose tower is laid out otherwise overrides it.
        """
        layers = self.vit_layers()
        if not layers:
            return None
        lm = self.language_model
        path = next((name for name, mod in self.model.named_modules() if mod is layers[0]), None)
        if path is None:
            return None
        parts = path.split(".")
        for i in range(1, len(parts) + 1):
            mod = self.model.get_submodule(".".join(parts[:i]))
            if not any(m is lm for m in mod.modules()):
                return mod
        return None

    def prefill_grid_map(self) -> Callable[[Tensor], Tensor] | None:
        """How a per-token ViT quantity ``[F, T_vit, K]`` reaches the pre_prefill grid, if it can."""
        return None

    # -------------------------------------------------------------- LLM side
    def chat_format(self) -> ChatFormat:
        """How a stream frames the conversation. ChatML, as every Qwen2-based LLM here uses;
        a family with another chat template overrides this."""
        return ChatFormat(
            prefix=f"<|im_start|>system\n{self.system_prompt}<|im_end|>\n<|im_start|>user\n",
            question="\n{question}<|im_end|>\n<|im_start|>assistant\n",
            stop_tokens=("<|im_end|>", "<|endoftext|>"),
        )

    @property
    def language_model(self) -> nn.Module:
        return self.model.model.language_model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.lm_head.weight.dtype

    def new_llm_state(self) -> LLMState:
        return LLMState(cache=DynamicCache(config=self.model.config.get_text_config()))

    def decoder_layout(self) -> DecoderLayout | None:
        """The decoder as the kv_cache stage sees it (Qwen2-style decoders; None: not exposed)."""
        lm = self.language_model
        layers = getattr(lm, "layers", None)
        if layers is None or not all(hasattr(layer, "self_attn") for layer in layers):
            return None
        cfg = self.model.config.get_text_config()
        rope = dict(getattr(cfg, "rope_parameters", None) or {})
        rope_type = "mrope" if "mrope_section" in rope else str(rope.get("rope_type", "default"))
        heads = cfg.num_attention_heads
        return DecoderLayout(
            attention=tuple(layer.self_attn for layer in layers),
            q_proj="q_proj", k_proj="k_proj", v_proj="v_proj", o_proj="o_proj",
            num_heads=heads,
            num_kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
            head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
            rope_theta=float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))),
            rope_type=rope_type,
            max_positions=int(getattr(cfg, "max_position_embeddings", 0) or 0),
            q_norm="q_norm" if hasattr(layers[0].self_attn, "q_norm") else None,
            k_norm="k_norm" if hasattr(layers[0].self_attn, "k_norm") else None,
        )  # fmt: skip

    def decoder_stack(self) -> DecoderStack | None:
        """The decoder layers as the in_decoder stage reaches them (None: not reachable).

        Every decoder layer must take ``input_layernorm`` and ``self_attn`` (with a ``layer_idx``)
        and be called with the ``position_embeddings`` the model computes once per forward, as
        transformers 5's decoders do; a family that adds features between layers overrides this to
        say from which layer a drop may come (``first_droppable``)."""
        lm = self.language_model
        layers = getattr(lm, "layers", None)
        needed = ("input_layernorm", "self_attn")
        if layers is None or not len(layers) or not all(all(hasattr(x, a) for a in needed) for x in layers):
            return None
        cfg = self.model.config.get_text_config()
        rope = dict(getattr(cfg, "rope_parameters", None) or {})
        return DecoderStack(
            layers=tuple(layers),
            rotary=getattr(lm, "rotary_emb", None),
            mrope="mrope_section" in rope,
            attention=str(getattr(cfg, "_attn_implementation", None) or "eager"),
        )

    def rope_inv_freq(self) -> Tensor:
        """``[head_dim / 2]`` float32 inverse frequencies the decoder's rotary embedding uses."""
        return self.language_model.rotary_emb.inv_freq.detach().to(torch.float32)

    @torch.no_grad()
    def rope_cos_sin(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """float32 ``cos, sin`` ``[L, d]`` the decoder's own rotary embedding gives ``positions``
        ``[R, L]`` (R = 1 for 1-D RoPE, 3 for M-RoPE: the model's section layout, interleaved or
        not, is applied by the model itself). For memories that rotate pre-RoPE keys at positions
        they choose."""
        rotary = self.language_model.rotary_emb
        dummy = torch.empty(0, dtype=torch.float32, device=positions.device)
        ids = positions if positions.shape[0] == 1 else positions[:, None]  # [B=1, L] or [3, B=1, L]
        cos, sin = rotary(dummy, ids)
        return cos[0].to(torch.float32), sin[0].to(torch.float32)

    def kv_extra_tokens_per_chunk(self) -> int:
        """Tokens :meth:`visual_embeds` adds around each chunk's visual tokens."""
        return 0

    def visual_row_mask(self, state: LLMState, tokens: VisualTokens) -> Tensor:
        """``[L]`` bool: which rows :meth:`prefill_visual` appends for this chunk are its visual tokens
        (False: delimiters, timestamp text). Called before the prefill."""
        return torch.ones(tokens.count, dtype=torch.bool)

    def embed(self, ids: Tensor) -> Tensor:
        """``[L]`` token ids to ``[L, D]`` input embeddings."""
        return self.model.get_input_embeddings()(ids.to(self.device))

    def text_positions(self, state: LLMState, n: int) -> Tensor:
        """Position ids for ``n`` text tokens appended to the stream (advances the counter)."""
        pos = torch.arange(state.next_position, state.next_position + n, device=self.device)
        state.next_position += n
        return pos[None]

    def visual_positions(self, state: LLMState, tokens: VisualTokens) -> Tensor:
        """Position ids for the kept visual tokens. 1-D RoPE: consecutive, as ReKV streams them."""
        return self.text_positions(state, tokens.count)

    def visual_embeds(self, tokens: VisualTokens) -> Tensor:
        return tokens.tokens.to(self.dtype).contiguous()

    @torch.inference_mode()
    def prefill(
        self, state: LLMState, embeds: Tensor, positions: Tensor, logits: bool = True
    ) -> Tensor | None:
        """Append ``embeds`` ``[L, D]`` at ``positions`` to the cache; return last-token logits ``[V]``.

        ``logits=False`` skips the vocabulary projection, which on a 150k-token vocabulary costs
        as much as prefilling dozens of tokens and is never read after a visual chunk. An empty
        ``embeds`` with ``logits=False`` (a chunk a data-dependent strategy such as DTD dropped
        whole, on a target that wraps chunks in no delimiters) leaves the cache as it is.
        """
        if embeds.shape[0] == 0 and not logits:
            return None
        if state.position_log is not None:
            state.position_log.append(positions.reshape(-1, positions.shape[-1]).detach())
        lm = self.language_model
        out = lm(
            inputs_embeds=embeds[None].to(self.dtype),
            position_ids=positions,
            use_cache=True,
            **{cache_argument(lm): state.cache},
        )
        return self.model.lm_head(out.last_hidden_state[0, -1]).float() if logits else None

    def prefill_text(self, state: LLMState, ids: Tensor, logits: bool = True) -> Tensor | None:
        return self.prefill(state, self.embed(ids), self.text_positions(state, ids.numel()), logits=logits)

    def prefill_visual(self, state: LLMState, tokens: VisualTokens) -> None:
        state.visual_tokens += tokens.count
        self.prefill(state, self.visual_embeds(tokens), self.visual_positions(state, tokens), logits=False)

    @torch.no_grad()
    def visual_segment(self, state: LLMState, tokens: VisualTokens) -> PrefillSegment:
        """The decoder input :meth:`prefill_visual` would prefill for this chunk, without running the
        decoder; assigns the chunk's positions (advances the counter), so chunks waiting for a group
        prefill (``stream.prefill_chunks``) hold their places. A target that overrides
        :meth:`prefill_visual` overrides this and :meth:`prefill_segments` too, or grouping is refused."""
        return PrefillSegment(self.visual_embeds(tokens), self.visual_positions(state, tokens), tokens.count)

    def prefill_segments(self, state: LLMState, segments: Sequence[PrefillSegment]) -> None:
        """Prefill consecutive chunks' segments in one decoder call, as separate prefills would place them."""
        seg = PrefillSegment.concat(segments)
        self.prefill(state, seg.embeds, seg.positions, logits=False)
        state.visual_tokens += seg.visual

    def end_of_video(self, state: LLMState) -> None:  # noqa: B027 - optional hook
        """Called before a question is prefilled (e.g. LLaVA-OV's optional newline token)."""

    @torch.inference_mode()
    def greedy_decode(
        self, state: LLMState, logits: Tensor, max_new_tokens: int, stop_ids: set[int]
    ) -> list[int]:
        """Greedy tokens continuing the cache; each step passes its position explicitly."""
        out: list[int] = []
        for _ in range(max_new_tokens):
            nxt = int(torch.argmax(logits))
            if nxt in stop_ids:
                break
            out.append(nxt)
            if len(out) == max_new_tokens:
                break  # the last token's logits would never be read
            logits = self.prefill_text(state, torch.tensor([nxt], device=self.device))
        return out

    def rewind(self, state: LLMState, length: int, next_position: int) -> None:
        """Drop everything after ``length`` cached tokens (a question and its answer)."""
        extra = state.length - length
        if extra > 0:
            state.cache.crop(-extra)
        state.next_position = next_position
