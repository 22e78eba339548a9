"""The ``in_decoder`` stage contract: visual tokens dropped between decoder layers during a prefill.

FastV and PyramidDrop act inside the language model. At a **boundary** (before 0-based decoder
layer ``ℓ``) the visual tokens of the current decoder call are ranked by the attention some rows
of the call pay them, and only the best ``k`` go on: layers ``ℓ`` and later run on a shorter
sequence, and their KV cache holds fewer entries than the layers before (per-layer cache lengths).
A strategy declares:

* its boundaries (:class:`Boundary`): FastV one, PyramidDrop several, each with where its ranking
  attention comes from: ``previous_attention`` is the map layer ``ℓ - 1`` computes anyway (FastV),
  ``next_projection`` recomputes one row with layer ``ℓ``'s own norm and q/k projections applied to
  the boundary's hidden states (PyramidDrop);
* its static budget (:meth:`InDecoderStrategy.keep`): the visual tokens a span of ``n`` keeps from
  each boundary on, known from ``n`` alone;
* its position policy: ``keep`` (the kept tokens keep their positions; later tokens continue the
  original numbering) or ``renumber`` (each stage numbers its tokens contiguously, and every later
  token of that stage is shifted down by what was dropped at the stage's boundaries);
* ``mode``: ``drop`` (physically shorter sequences) or ``mask`` (every token still computed, the
  dropped ones hidden as keys from layers ``>= ℓ``; no speed-up, FastV's ablation variant).

**Which rows rank a span** (``rank_rows``). A span is the visual rows of one chunk (or of one offline
prompt); its *segment* is the rows of the call that belong to it. ``last`` ranks with the segment's
last row still present: in an offline prefill whose segment ends with the question this is the
authors' rule (the last prompt token); in a stream, where a chunk is prefilled before any question
exists, it is the chunk's own last row (its last visual token or closing delimiter), a
query-agnostic rule that costs one attention row per span. ``mean`` averages the rows of the whole
segment (the FastV paper's wording), which costs one ``[rows x keys]`` attention block per span at
the ranking layer.

The per-stream bookkeeping (:class:`InDecoderState`) lives on the stream's LLM state, so a chunk's
transaction copies and restores it with the rest.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from .errors import CompatibilityError
from .strategy import Strategy, StrategyParams
from .types import Stage

__all__ = [
    "Boundary",
    "DecoderStack",
    "InDecoderParams",
    "InDecoderState",
    "InDecoderStrategy",
    "Span",
    "floor_fraction",
    "spans_of",
    "top_rows",
]

PositionPolicy = Literal["keep", "renumber"]
RankSource = Literal["previous_attention", "next_projection"]
RankRows = Literal["last", "mean"]


@dataclass(frozen=True)
class Boundary:
    """A drop before 0-based decoder layer ``layer``, ranked from ``source``."""

    layer: int
    source: RankSource


@dataclass(frozen=True)
class DecoderStack:
    """A target's decoder as the in_decoder stage reaches it."""

    layers: tuple[nn.Module, ...]
    """The decoder layers in call order (each with ``input_layernorm`` and ``self_attn``)."""
    rotary: nn.Module | None
    """The module that turns position ids into the ``(cos, sin)`` every layer gets."""
    mrope: bool
    """3-D multimodal RoPE (Qwen-VL): positions cannot be renumbered on one axis."""
    attention: str
    """The decoder config's attention implementation (``sdpa``, ``eager``, ...)."""
    first_droppable: int = 1
    """The smallest boundary layer the model allows (Qwen3-VL adds DeepStack features at the
    visual rows after its first layers, so a drop must come after them)."""
    why_first: str = ""

    @property
    def num_layers(self) -> int:
        return len(self.layers)


@dataclass(frozen=True)
class Span:
    """The visual rows of one chunk (or prompt) in a decoder call.

    ``rows`` ``[n]`` int64, ascending, index the call's rows (negative values are cached key
    columns before the call, allowed in ``mask`` mode only, where the reference re-ranks its span at
    every decode step); ``segment`` = ``[start, end)`` rows of the call whose rows rank the span;
    ``original`` = the span's visual count, of which every budget is a fraction.
    """

    rows: Tensor
    segment: tuple[int, int]
    original: int


def spans_of(masks: list[Tensor]) -> list[Span]:
    """One span per chunk from the chunks' ``[L_i]`` visual-row masks, in call order (a group
    prefill concatenates them); each chunk's own rows are its segment."""
    spans, start = [], 0
    for mask in masks:
        rows = torch.nonzero(mask.cpu(), as_tuple=False).flatten() + start
        if rows.numel():
            spans.append(Span(rows, (start, start + mask.numel()), rows.numel()))
        start += mask.numel()
    return spans


@dataclass
class InDecoderState:
    """One stream's in_decoder bookkeeping; plain fields, deep-copied by a chunk's snapshot."""

    boundaries: int = 0
    pending: list[Tensor] = field(default_factory=list)
    """Visual-row masks of the chunks whose prefill comes next (a group prefill takes several)."""
    dropped: list[int] = field(default_factory=list)
    """Tokens dropped at each boundary so far: ``renumber`` shifts stage ``j``'s positions down by
    the sum of the first ``j`` entries."""
    hidden: Tensor | None = None
    """``mask`` mode: key columns (layer-0 cache indices) hidden from the layers past the boundary."""
    last_kept: list[Tensor] = field(default_factory=list)
    """Kept rows of the last call that dropped, per boundary, as indices into that call's rows."""
    layers: tuple[int, ...] = ()
    """The boundary layers."""
    present: list[Tensor] = field(default_factory=list)
    """``drop`` mode, per boundary: ``[T]`` bool over layer 0's cache entries, True where the layers
    from that boundary on hold the entry too (a kv_cache memory that trims the cache by layer-0
    indices maps them to each layer's own with :meth:`entries`)."""

    def __post_init__(self) -> None:
        if not self.dropped:
            self.dropped = [0] * self.boundaries

    def entries(self, layer: int) -> Tensor | None:
        """``[T]`` bool: which of layer 0's cache entries decoder layer ``layer`` holds (None: all)."""
        stage = sum(1 for b in self.layers if b <= layer)
        return self.present[stage - 1] if stage and len(self.present) >= stage else None

    def keep_entries(self, keep: Tensor) -> None:
        """A kv_cache memory kept only layer 0's entries ``keep`` (``[T]`` bool): the maps follow."""
        self.present = [p[keep[: p.numel()].to(p.device)] for p in self.present]

    def offset(self, stage: int) -> int:
        """How far stage ``stage``'s positions sit below the original numbering (``renumber``)."""
        return sum(self.dropped[:stage])


def floor_fraction(n: int, ratio: float) -> int:
    """``floor(n * ratio)`` with the ratio rounded to 1e-9 first, so 0.29 x 100 is 29, not the
    28 a float product gives."""
    return int(Fraction(round(ratio * 10**9), 10**9) * n)


def top_rows(scores: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` highest ``scores`` ``[n]``, ascending; exact ties go to the lower index."""
    k = max(0, min(k, scores.numel()))
    order = torch.sort(scores.float(), descending=True, stable=True).indices[:k]
    return torch.sort(order).values


class InDecoderParams(StrategyParams):
    """What every in_decoder strategy accepts."""

    rank_rows: RankRows = Field(
        "last",
        description="Rows whose attention ranks a chunk's visual tokens: last = the last row of the chunk's "
        "segment (offline: the question's last token, the authors' rule; in a stream: the chunk's own last row), "
        "mean = the mean over the segment's rows (one attention block per chunk at the ranking layer)",
    )


class InDecoderStrategy(Strategy):
    """Base of ``in_decoder`` strategies (FastV, PyramidDrop)."""

    stage = Stage.IN_DECODER
    Params: ClassVar[type[StrategyParams]] = InDecoderParams
    changes_count = False
    """The prompt keeps every token it was given; the later layers see fewer (:meth:`keep`)."""
    mode: Literal["drop", "mask"] = "drop"
    positions: PositionPolicy = "keep"
    boundary_field: ClassVar[str] = "layer"
    """The parameter that sets the boundaries (named in build-time refusals)."""

    @abstractmethod
    def boundaries(self, num_layers: int) -> tuple[Boundary, ...]:
        """The boundaries on a decoder of ``num_layers`` layers, ascending."""

    @abstractmethod
    def keep(self, n: int, boundary: int) -> int:
        """Visual tokens a span of ``n`` keeps from boundary ``boundary`` (0-based) on."""

    @property
    def rank_rows(self) -> RankRows:
        return getattr(self.params, "rank_rows", "last")

    def planned_keep(self, n: int, num_layers: int) -> tuple[int, ...]:
        """The static count per boundary for a span of ``n`` visual tokens."""
        return tuple(self.keep(n, b) for b in range(len(self.boundaries(num_layers))))

    def select(self, scores: Tensor, k: int) -> Tensor:
        """Which of a span's current rows go on: the ``k`` best ``scores``, ascending."""
        return top_rows(scores, k)

    def check_decoder(self, stack: DecoderStack, target: str, visual: int | None) -> None:
        """Refuse at build time what this decoder cannot run (``visual``: tokens a chunk prefills,
        None when data-dependent)."""
        owner = self.name
        n = stack.num_layers
        bounds = self.boundaries(n)
        field = f"{owner}.{self.boundary_field}"
        for b in bounds:
            if not 1 <= b.layer < n:
                raise CompatibilityError(
                    f"{field}: layer {b.layer} is outside the {n}-layer decoder of target '{target}' (a drop needs a "
                    f"layer before it and one after it); use 1..{n - 1}"
                )
        if bounds and bounds[0].layer < stack.first_droppable:
            raise CompatibilityError(
                f"{field}: layer {bounds[0].layer} comes before layer {stack.first_droppable} of target '{target}' "
                f"({stack.why_first}); use a boundary >= {stack.first_droppable}"
            )
        if self.positions == "renumber" and stack.mrope:
            raise CompatibilityError(
                f"{owner}.positions = renumber has no meaning under the 3-D M-RoPE of target '{target}' "
                "(a token's position is a (t, h, w) triple, not a count); use positions: keep"
            )
        if visual is not None:
            for i, b in enumerate(bounds):
                if self.keep(visual, i) < 1:
                    raise CompatibilityError(
                        f"{owner}: the schedule keeps none of a chunk's {visual} visual tokens from layer {b.layer} on, "
                        f"on target '{target}'; {self.fix_for_empty()}"
                    )

    def fix_for_empty(self) -> str:
        """How to change the parameters when a boundary would keep nothing (for the refusal)."""
        return "raise the kept fraction"

    def new_decoder_state(self, num_layers: int) -> InDecoderState:
        bounds = self.boundaries(num_layers)
        return InDecoderState(boundaries=len(bounds), layers=tuple(b.layer for b in bounds))

    @classmethod
    def conformance_params(cls, info: Any) -> dict[str, Any]:
        return {}
