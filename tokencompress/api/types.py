"""The shared vocabulary of the framework, below strategies, targets, pipelines and streams.

Everything here is plain data: the stages, what a target promises at each stage, what a
strategy may need, where a chunk sits in its stream, the per-layer views a strategy is handed
and the stream's shape from the YAML. Keeping it in one module that imports nothing of the
package except the block adapter's interface is what keeps the rest free of import cycles.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor

from .value_bounds import bounded

if TYPE_CHECKING:
    from .block_adapter import BlockAdapter

__all__ = [
    "Stage",
    "StageInfo",
    "Capability",
    "provided_capabilities",
    "ChunkInfo",
    "LayerProbe",
    "BlockCall",
    "StreamConfig",
    "ChatFormat",
]


class Stage(str, Enum):
    """Pipeline stages, in the order a frame flows through them."""

    PRE_VIT_BLOCK = "pre_vit_block"
    """Inside every vision-encoder layer; the strategy may compute the layer for a token subset."""
    POST_VIT = "post_vit"
    """Encoder output (selected feature layer), before the projector and any pooling."""
    PRE_PREFILL = "pre_prefill"
    """Projected (and pooled) visual tokens in LLM width, before they are placed in the prompt."""
    IN_DECODER = "in_decoder"
    """Between the decoder's layers during a prefill: at the boundaries a strategy names, the visual
    tokens of the call are ranked and only the kept ones run through the later layers (FastV,
    PyramidDrop; contract in :mod:`tokencompress.api.in_decoder`)."""
    KV_CACHE = "kv_cache"
    """The decoder's attention cache: what the LLM keeps and attends to while a stream encodes and
    when a question is asked (contract in :mod:`tokencompress.api.kv_cache`)."""

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.value


@dataclass(frozen=True)
class StageInfo:
    """What a target promises about the tokens a strategy sees at one stage, for build-time checks."""

    stage: Stage
    tokens_per_frame: int
    """Tokens one frame carries into this stage (e.g. 729 at post_vit, 196 at pre_prefill on LLaVA-OV)."""
    dim: int
    """Feature width at this stage."""
    grid: tuple[int, int]
    """(rows, cols) of one frame's token grid."""
    count_locked: bool = False
    """True where the model's own code after this stage needs every token (stock pooling, mergers)."""


class Capability(str, Enum):
    """Capabilities a strategy may require from a target at its stage."""

    BLOCK_ADAPTER = "block_adapter"
    """Per-layer access to ln/q/k/v/attention/out/mlp so a layer can run for a token subset."""
    ATTENTION = "attention"
    """Attention weights of a chosen encoder layer."""
    KEYS = "keys"
    """Attention keys of a chosen encoder layer."""
    CLS_TOKEN = "cls_token"
    """A class token in the encoder output."""
    POSITION_FREE_ATTENTION = "position_free_attention"
    """Encoder attention that depends on token content only (no rotary), so merged tokens can
    attend without a position of their own. Implies :attr:`SUBSET_ATTENTION`."""
    SUBSET_ATTENTION = "subset_attention"
    """The block adapter runs attention among any subset of a frame's tokens, each standing at a
    chosen original position (``BlockAdapter.at``: rotary angles and window of that position), so
    merged tokens can attend (ToMe). Position-free attention has it for free."""
    PRE_ROPE_PROJECTIONS = "pre_rope_projections"
    """kv_cache: the decoder's q/k/v/o projections by name, so queries and keys can be read
    before RoPE and attention computed by the strategy (ReKV)."""
    ROPE_1D = "rope_1d"
    """kv_cache: the decoder uses default 1-D RoPE, so positions can be renumbered freely."""

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.value


Need = Capability
"""The name this enum had before 0.2 (kept so existing plugins import unchanged)."""

_IMPLIED_NEEDS = {Capability.POSITION_FREE_ATTENTION: frozenset({Capability.SUBSET_ATTENTION})}


def provided_capabilities(provides: frozenset[Capability]) -> frozenset[Capability]:
    """``provides`` plus what it implies (position-free attention runs any token subset)."""
    return provides.union(*(_IMPLIED_NEEDS.get(n, frozenset()) for n in provides))


@dataclass(frozen=True)
class LayerProbe:
    """The input of one encoder layer in this chunk, with the adapter to recompute its parts.

    Strategies that need a layer's attention or keys (VisionZip) recompute just what they need
    from ``hidden`` (e.g. ``adapter.k(adapter.ln1(hidden))``) instead of forcing the whole tower
    onto eager attention.
    """

    hidden: Tensor
    """``[F, T, C]`` input of the layer."""
    adapter: BlockAdapter
    num_layers: int = 0
    """Depth of the tower, so a strategy can resolve negative layer indices."""
    received: Tensor | None = None
    """``[F, T]`` float32 attention each token received in this layer's own pass (mean over heads
    and query rows; a CLS column included), when a strategy asked the pipeline to tap the layer
    (``Strategy.attention_taps``) and the layer ran through the tap; None otherwise."""


@dataclass(frozen=True)
class ChunkInfo:
    """Where a chunk sits in its stream, plus what the target exposes about it to strategies."""

    index: int
    """0 for the stream's first chunk, then 1, 2, ...; leftover frames form their own chunk."""
    first_frame: int
    num_frames: int
    probes: dict[int, LayerProbe] = field(default_factory=dict, compare=False, repr=False)
    """Inputs of the encoder layers some strategy asked for (``Strategy.probe_layers``), by index."""
    to_prefill_grid: Callable[[Tensor], Tensor] | None = field(default=None, compare=False, repr=False)
    """Carries a per-token ViT quantity ``[F, T_vit, K]`` to the pre_prefill grid ``[F, T_pre, K]``
    exactly as the target pools features (None where the target has no such map)."""
    first_token_frame: int | None = None
    """Stream index of the chunk's first token frame (a row of the frame axis of
    :class:`~tokencompress.api.tokens.VisualTokens`: one video frame, or a Qwen temporal slice of 2
    frames); None = ``first_frame``."""


@dataclass
class BlockCall:
    """Everything a block strategy sees for one layer call of one chunk."""

    adapter: BlockAdapter
    layer_index: int
    num_layers: int
    state: Any
    chunk: ChunkInfo


class StreamConfig(BaseModel):
    """How frames are fed: sampled at ``fps``, grouped ``frames_per_chunk`` at a time, and the
    kept tokens of ``prefill_chunks`` chunks prefilled in one decoder call (a prefill of few rows
    runs matrix multiplies far below their per-FLOP speed; grouping trades bounded latency for it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    _bounded = field_validator("*")(bounded)
    frames_per_chunk: int = Field(1, ge=1, description="Frames encoded and prefilled together")
    fps: float = Field(0.5, gt=0, allow_inf_nan=False, description="Frames sampled per second of video")
    prefill_chunks: int = Field(
        1,
        ge=1,
        description="Chunks whose kept visual tokens are prefilled together in one LLM call: each chunk's "
        "vision path runs when it is complete, its tokens wait for at most this many - 1 later chunks "
        "(a question or the end of the stream prefills what waits first)",
    )
    decoder_kernels: Literal["stock", "packed"] = Field(
        "stock",
        description="packed: the decoder's linears run on weights prepacked once (CPU float32), faster "
        "for few-row prefills and equal to the stock layers to float32 rounding; stock: transformers' own",
    )


@dataclass(frozen=True)
class ChatFormat:
    """How a target's LLM frames a streamed video conversation, from its chat template.

    A stream prefills ``prefix`` once, then visual chunks, then for every question
    ``question`` with ``{question}`` replaced; decoding stops at any of ``stop_tokens``.
    """

    prefix: str
    question: str
    stop_tokens: tuple[str, ...]

    def question_text(self, question: str) -> str:
        return self.question.replace("{question}", question)
