"""Strategy base classes: what every compression method declares and the template it fills in.

The split mirrors how methods differ: a block strategy (``pre_vit_block``) wraps one encoder
layer's computation; a token strategy (``post_vit``/``pre_prefill``) maps a :class:`VisualTokens`
to a smaller one; a :class:`ScoringPruner` only scores tokens, while the base owns budgets,
deterministic top-k and the aligned gather. Parameters are pydantic models with
``extra="forbid"`` so a misspelt YAML key is an error, not a silent default.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor

from .errors import BudgetError
from .tokens import VisualTokens
from .types import BlockCall, ChunkInfo, LayerProbe, Need, Stage, StageInfo

__all__ = [
    "Need",
    "StrategyParams",
    "ChunkInfo",
    "LayerProbe",
    "BlockCall",
    "Strategy",
    "BlockStrategy",
    "TokenStrategy",
    "ScoringPruner",
    "select_per_frame",
]


class StrategyParams(BaseModel):
    """Base of every strategy's parameters: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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
    needs: ClassVar[frozenset[Need]] = frozenset()
    changes_count: ClassVar[bool] = True
    """False when the stage's token count is unchanged (shape-preserving)."""
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
        """Output tokens for an input of ``frames`` x ``tokens_per_frame``; None if data-dependent."""
        return None if self.changes_count else tokens_per_frame * frames

    def check(self, info: StageInfo) -> None:  # noqa: B027 - optional hook
        """Refuse, at build time, parameters the target's token layout cannot satisfy."""

    def new_state(self) -> Any:
        """Fresh per-stream state (None for stateless strategies)."""
        return None

    @classmethod
    def conformance_params(cls, info: StageInfo) -> dict[str, Any]:
        """Parameters that fit a stage with this layout, for the strategy × target matrix and
        ``tokencompress.testing``; override when a parameter has no default or must scale."""
        return {}

    def probe_layers(self, num_layers: int) -> tuple[int, ...]:
        """Encoder layers (non-negative indices) whose inputs this strategy reads via ``chunk.probes``."""
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


class BlockStrategy(Strategy):
    """A ``pre_vit_block`` strategy: computes (part of) an encoder layer through the target's adapter.

    It must return a tensor of the input's shape (stock pooling and mergers after the tower need
    every token, specs/targets.md §0.4) unless it declares ``changes_count``, which the pipeline
    allows only where the target's stage is not ``count_locked``.
    """

    stage = Stage.PRE_VIT_BLOCK
    needs = frozenset({Need.BLOCK_ADAPTER})
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


def select_per_frame(scores: Tensor, frame: Tensor, budgets: Tensor, first_frame: int = 0) -> Tensor:
    """Global row indices of the ``budgets[f]`` highest-scoring rows of every frame, ascending.

    Ties go to the lower index (stable sort), so results never depend on top-k's tie order.
    NaN or infinite scores are refused (ValueError; the pipeline names the strategy).
    Rows must be frame-major, as in :class:`VisualTokens`.
    """
    if scores.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=scores.device)
    finite = torch.isfinite(scores)
    if not bool(finite.all()):  # NaN would sort as largest and silently keep arbitrary rows
        nan = int(torch.isnan(scores).sum())
        raise ValueError(
            f"scores must be finite, got {nan} NaN and {int((~finite).sum()) - nan} infinite of {scores.numel()}"
        )
    counts = torch.bincount(frame - first_frame, minlength=budgets.numel())
    starts = torch.cumsum(counts, 0) - counts
    uniform = bool((counts == counts[0]).all()) and bool((budgets == budgets[0]).all())
    if uniform and counts.numel():
        per = int(counts[0])
        k = int(budgets[0])
        order = torch.sort(scores.view(-1, per), dim=1, descending=True, stable=True).indices[:, :k]
        local = torch.sort(order, dim=1).values
        return (local + starts[:, None]).reshape(-1)
    picked = []
    for f in range(budgets.numel()):
        s = scores[int(starts[f]) : int(starts[f] + counts[f])]
        order = torch.sort(s, descending=True, stable=True).indices[: int(budgets[f])]
        picked.append(torch.sort(order).values + starts[f])
    return torch.cat(picked) if picked else scores.new_zeros(0, dtype=torch.long)


class ScoringPruner(TokenStrategy):
    """Template for per-frame pruners: subclasses only implement :meth:`score`.

    The base owns the budget (``params.tokens_per_frame`` unless :meth:`frame_budgets` is
    overridden), its validation against the target, the deterministic per-frame top-k and the
    gather of every aligned field.
    """

    def budget(self) -> int:
        return int(self.params.tokens_per_frame)  # type: ignore[attr-defined]

    def planned_count(self, tokens_per_frame: int, frames: int) -> int | None:
        return min(self.budget(), tokens_per_frame) * frames

    def check(self, info: StageInfo) -> None:
        k = self.budget()
        if k > info.tokens_per_frame:
            raise BudgetError(
                f"{self.name}.tokens_per_frame = {k} is larger than the {info.tokens_per_frame} tokens a frame "
                f"has at {info.stage.value} on this model; use at most {info.tokens_per_frame}"
            )

    def frame_budgets(self, tokens: VisualTokens, state: Any) -> Tensor:
        """``[F]`` tokens to keep per frame."""
        counts = tokens.counts()
        return torch.clamp(counts, max=self.budget())

    @abstractmethod
    def score(self, tokens: VisualTokens, state: Any, chunk: ChunkInfo) -> Tensor:
        """``[N]`` importance per row: higher is kept first."""

    def apply(self, tokens: VisualTokens, state: Any, chunk: ChunkInfo) -> VisualTokens:
        scores = self.score(tokens, state, chunk)
        budgets = self.frame_budgets(tokens, state)
        index = select_per_frame(scores, tokens.frame, budgets, tokens.first_frame)
        return tokens.take(index)
