"""Strategy base classes: what every compression method declares and the template it fills in.

The split mirrors how methods differ: a block strategy (``pre_vit_block``) wraps one encoder
layer's computation; a token strategy (``post_vit``/``pre_prefill``) maps a :class:`VisualTokens`
to a smaller one; per-frame pruners build on ``scoring_pruner.ScoringPruner`` (plan, then commit).
Parameters are pydantic models with ``extra="forbid"`` so a misspelt YAML key is an error, not a
silent default.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, field_validator
from torch import Tensor

from .errors import CompatibilityError
from .tokens import VisualTokens
from .types import BlockCall, Capability, ChunkInfo, LayerProbe, Stage, StageInfo
from .value_bounds import bounded

__all__ = [
    "Capability",
    "StrategyParams",
    "ChunkInfo",
    "LayerProbe",
    "BlockCall",
    "Strategy",
    "BlockStrategy",
    "TokenStrategy",
    "encoder_layer_index",
]


def encoder_layer_index(owner: str, layer: int, num_layers: int) -> int:
    """``layer`` (negative counts from the last layer, like a Python index) as an index into
    ``num_layers`` encoder layers, for strategies that probe one layer (``probe_layers``); refused
    at build time naming ``<owner>.layer`` and the valid range."""
    index = layer + num_layers if layer < 0 else layer
    if not 0 <= index < num_layers:
        raise CompatibilityError(
            f"{owner}.layer = {layer} is outside the {num_layers} encoder layers of this model; "
            f"use {-num_layers}..{num_layers - 1}"
        )
    return index


class StrategyParams(BaseModel):
    """Base of every strategy's parameters: unknown keys are errors, values are immutable, and
    every number (of every field, in subclasses too) is within :mod:`.value_bounds`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    _bounded = field_validator("*")(bounded)


def count_undeclared(cls: type) -> str:
    return (
        f"{cls.__qualname__} changes the token count but does not say how many tokens it keeps: "
        "override planned_count(tokens_per_frame, frames), or set dynamic_count = True if it depends on the data"
    )


class Strategy(ABC):
    """A compression method. Instances are immutable recipes; all mutable data lives in states.

    Subclasses set ``name``, ``stage``, ``Params`` and, where it applies, ``needs``,
    ``changes_count`` and ``stateful``. One instance may serve many streams at once: every
    stream gets its own object from :meth:`new_state`. ``needs`` and ``changes_count`` may be
    set per instance in ``__init__`` when they depend on the parameters (ToMe's ``output``);
    framework code reads them from the instance.
    """

    name: ClassVar[str]
    stage: ClassVar[Stage]
    Params: ClassVar[type[StrategyParams]] = StrategyParams
    needs: ClassVar[frozenset[Capability]] = frozenset()
    changes_count: ClassVar[bool] = True
    """False when the stage's token count is unchanged (shape-preserving)."""
    dynamic_count: ClassVar[bool] = False
    """True when the output count depends on the data. A strategy that changes the count must
    either say so here or override :meth:`planned_count`: a serving engine sizes buffers from it,
    so a silent "unknown" is refused at registration."""
    stateful: ClassVar[bool] = False
    summary: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    reference: ClassVar[str] = ""

    def __init__(self, params: StrategyParams | None = None, **kwargs: Any) -> None:
        if params is None:
            params = self.Params(**kwargs)
        elif kwargs:
            raise TypeError("pass either a params object or keyword parameters, not both")
        self.params = params

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.params.model_dump().items())
        return f"{type(self).__name__}({fields})"

    def planned_count(self, tokens_per_frame: int, frames: int) -> int | None:
        """Output tokens for an input of ``frames`` x ``tokens_per_frame``; None if data-dependent.

        The default covers shape-preserving strategies (the input count) and ones that declare
        ``dynamic_count`` (None); every other count-changing strategy overrides it.
        """
        if not self.changes_count:
            return tokens_per_frame * frames
        if self.dynamic_count:
            return None
        raise TypeError(count_undeclared(type(self)))

    def planned_count_at(self, tokens_per_frame: int, frames: int, chunk_index: int) -> int | None:
        """Output tokens of the stream's chunk number ``chunk_index`` (0 = the first), when the count
        follows the chunk's place as well as its shape; None if data-dependent.

        A serving engine lays out a whole request (one stream) before its encoder runs, so it asks
        for every chunk's count. The default is :meth:`planned_count`, the same for every chunk;
        EVS overrides it (its stream's first chunk keeps at least one whole frame)."""
        return self.planned_count(tokens_per_frame, frames)

    def check(self, info: StageInfo) -> None:  # noqa: B027 - optional hook
        """Refuse, at build time, parameters the target's token layout cannot satisfy."""

    def new_state(self) -> Any:
        """Fresh per-stream state (None for stateless strategies)."""
        return None

    def copy_state(self, state: Any) -> Any:
        """A copy of ``state`` that this strategy's later chunks cannot change: what a chunk's
        transaction restores if the chunk fails. The default deep-copies; a strategy whose large
        tensors are replaced, never written in place, may copy only its containers."""
        return copy.deepcopy(state)

    @classmethod
    def conformance_params(cls, info: StageInfo) -> dict[str, Any]:
        """Parameters that fit a stage with this layout, for the strategy × target matrix and
        ``tokencompress.testing``; override when a parameter has no default or must scale."""
        return {}

    def probe_layers(self, num_layers: int) -> tuple[int, ...]:
        """Encoder layers (non-negative indices) whose inputs this strategy reads via ``chunk.probes``."""
        return ()

    def attention_taps(self, num_layers: int) -> tuple[int, ...]:
        """Encoder layers (non-negative indices, a subset of :meth:`probe_layers`) whose own
        self-attention the pipeline computes explicitly, taking each token's received attention on
        the way (``chunk.probes[i].received``): the saliency costs no second pass over the layer."""
        return ()

    def effective_stage(self, infos: dict[Stage, StageInfo]) -> Stage:
        """Where the strategy actually runs on a target with these stage layouts.

        Normally its declared ``stage``. A ``post_vit`` method that must select on a pooled grid
        (VisionZip ``placement: after_pool`` on LLaVA-OV) returns ``PRE_PREFILL``; the pipeline
        runs it there, ahead of the stage's own strategies, and reports the move.
        """
        return self.stage

    def start_chunk(self, state: Any, chunk: ChunkInfo) -> None:  # noqa: B027 - optional hook
        """Called once per chunk before the vision tower runs."""

    def compiled(self, compiler: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Strategy:
        """This strategy with its hot loops run through ``compiler`` (``compiler(fn)`` is ``fn`` under
        the bound pipeline's ``torch.compile`` options); called once per pipeline bound with
        compile on. The default, ``self``, has nothing to compile.

        Override by returning :meth:`with_kernels` of pure tensor functions (no Python state read
        or written inside, shapes fixed per stream, so one graph serves a stream): the instance
        itself stays the eager recipe, shared by pipelines bound without compile. Results must
        agree with the eager path to float32 rounding.
        """
        return self

    def with_kernels(self, **kernels: Any) -> Strategy:
        """A shallow copy of this strategy with ``kernels`` set as instance attributes."""
        twin = copy.copy(self)
        twin.__dict__.update(kernels)
        return twin


class BlockStrategy(Strategy):
    """A ``pre_vit_block`` strategy: computes (part of) an encoder layer through the target's adapter.

    It must return a tensor of the input's shape (stock pooling and mergers after the tower need
    every token, docs/design.md §4) unless it declares ``changes_count``, which the pipeline
    allows only where the target's stage is not ``count_locked``.
    """

    stage = Stage.PRE_VIT_BLOCK
    needs = frozenset({Capability.BLOCK_ADAPTER})
    changes_count = False
    computes_layer: ClassVar[bool] = False
    """True when ``block_forward`` computes the layer itself and never calls ``run_next``: such a
    strategy must be the last one of its stage, or the ones after it would silently not run."""

    @abstractmethod
    def block_forward(self, call: BlockCall, hidden: Tensor, run_next: Callable[[Tensor], Tensor]) -> Tensor:
        """Return the layer output for ``hidden`` ``[F, T, C]``.

        ``run_next(hidden)`` runs the rest of the chain (later strategies, then the stock layer);
        a strategy that computes the layer itself through ``call.adapter`` need not call it.
        """


class TokenStrategy(Strategy):
    """A ``post_vit`` or ``pre_prefill`` strategy: maps the chunk's tokens to (usually fewer) tokens."""

    @abstractmethod
    def apply(self, tokens: VisualTokens, state: Any, chunk: ChunkInfo) -> VisualTokens:
        """Return the reduced tokens, built with ``tokens.take``/``tokens.merge``."""
