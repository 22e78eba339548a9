"""The scoring-pruner protocol: plan a chunk's selection without side effects, then commit it.

Every per-frame pruner (STC-Pruner, VidCom² and its streaming baseline, the ``uniform_grid``
plugin) decides the same two things per chunk: a score per row and a budget per frame. The base
owns everything after that (deterministic per-frame top-k, the gather of every aligned field) and
the order of effects: :meth:`ScoringPruner.plan` is pure, the carrier is cut, and only then
:meth:`ScoringPruner.commit` updates the stream's state. A chunk that fails anywhere before the
commit leaves the state as it was, so a stream can retry or skip it.

A pruner that keeps a fixed number of tokens per frame declares it by giving its parameters the
:class:`PerFrameParams` base; the budgets, ``planned_count`` and the build-time check then come
for free and the pruner only writes :meth:`ScoringPruner.score`. A pruner with its own budget rule
(VidCom²'s frame uniqueness) overrides :meth:`ScoringPruner.plan` instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import Field
from torch import Tensor

from .errors import BudgetError
from .strategy import StrategyParams, TokenStrategy
from .tokens import VisualTokens
from .types import ChunkInfo, StageInfo

__all__ = ["FrameLayout", "PerFrameParams", "Plan", "ScoringPruner", "select_per_frame"]


class FrameLayout:
    """Which rows of a chunk belong to which frame, worked out once per prune.

    ``index`` ``[N]`` long: frame of every row counted from the chunk's first frame; ``counts``
    ``[F]`` long: rows per frame; ``per_frame``: that count when every frame holds the same
    (positive) number of rows, else None (ragged, after an earlier strategy).

    A carrier that still holds its full grid (the usual first token stage) knows all three without
    looking at its rows, and most pruners never read ``index`` or ``counts`` in that case (the
    equal-frames paths reshape instead), so :meth:`of` leaves both to be computed on first use: a
    prune runs at stream rate on a few hundred rows, where each tensor op is a visible cost.
    """

    __slots__ = ("_frame", "_first", "_index", "_counts", "per_frame", "num_frames")

    def __init__(self, index: Tensor, counts: Tensor, per_frame: int | None) -> None:
        self._index, self._counts = index, counts
        self._frame, self._first = None, 0
        self.per_frame, self.num_frames = per_frame, counts.numel()

    @classmethod
    def of(cls, tokens: VisualTokens) -> FrameLayout:
        f, (h, w) = tokens.num_frames, tokens.grid
        t = h * w
        if f and t and tokens.tokens.shape[0] == f * t:  # full grid: nothing dropped or merged
            layout = cls.__new__(cls)
            layout._index = layout._counts = None
            layout._frame, layout._first = tokens.frame, tokens.first_frame
            layout.per_frame, layout.num_frames = t, f
            return layout
        index = tokens.frame - tokens.first_frame
        counts = torch.bincount(index, minlength=tokens.num_frames)
        f = counts.numel()
        per = int(counts[0]) if f else 0
        uniform = f > 0 and per > 0 and (f == 1 or bool((counts == per).all()))
        return cls(index, counts, per if uniform else None)

    @property
    def index(self) -> Tensor:
        if self._index is None:
            self._index = self._frame - self._first
        return self._index

    @property
    def counts(self) -> Tensor:
        if self._counts is None:
            self._counts = torch.full(
                (self.num_frames,), self.per_frame, dtype=torch.long, device=self.device
            )
        return self._counts

    @property
    def device(self) -> torch.device:
        return (self._frame if self._counts is None else self._counts).device

    def __repr__(self) -> str:
        return f"FrameLayout(num_frames={self.num_frames}, per_frame={self.per_frame})"

    def mean(self, values: Tensor) -> Tensor:
        """``[F, ...]`` per-frame mean of ``values`` ``[N, ...]`` (an empty frame gives 0).

        Equal frames take the reshape-and-mean path, whose float32 rounding the reference fixtures
        record; ragged frames fall back to a segment sum.
        """
        f = self.num_frames
        if self.per_frame is not None:
            return values.reshape(f, self.per_frame, *values.shape[1:]).mean(dim=1)
        sums = torch.zeros(f, *values.shape[1:], dtype=values.dtype, device=values.device)
        sums.index_add_(0, self.index, values)
        return sums / self.counts.clamp(min=1).to(values.dtype).reshape(-1, *([1] * (values.dim() - 1)))


class PerFrameParams(StrategyParams):
    """Parameters of a pruner that keeps the same number of tokens in every frame.

    Subclasses add their own fields and may redeclare ``tokens_per_frame`` (another default, a
    description, or no default at all) as long as it stays a positive int.
    """

    tokens_per_frame: int = Field(60, ge=1, description="tokens kept per frame")


@dataclass(frozen=True)
class Plan:
    """One chunk's decision, computed without touching the stream's state.

    ``scores`` ``[N]``: higher is kept first (ties go to the lower row). ``budgets`` ``[F]`` long:
    rows to keep per frame, at most what the frame holds. ``update``: what :meth:`ScoringPruner.commit`
    writes into the state once the chunk went through (None for a stateless pruner). ``layout``:
    the chunk's :class:`FrameLayout`, reused by the selection. ``rows``: ``[K]`` ascending rows to
    keep, when the planner already knows them (a threshold rule: the ``budgets[f]`` highest
    scores of a frame are exactly its rows past the threshold), so the base skips the per-frame
    sort; it must equal :func:`select_per_frame` of ``scores`` and ``budgets``. None: the base selects.
    ``per_frame_budget``: set when ``budgets`` is ``min(per_frame_budget, rows of the frame)`` for
    every frame (a fixed budget), so the selection can skip reading the budgets tensor back.
    """

    scores: Tensor
    budgets: Tensor
    layout: FrameLayout
    update: Any = None
    rows: Tensor | None = None
    per_frame_budget: int | None = None

    def keeps_all(self) -> bool:
        if self.per_frame_budget is not None and self.layout.per_frame is not None:
            return self.per_frame_budget >= self.layout.per_frame
        return bool((self.budgets >= self.layout.counts).all())

    def select(self) -> Tensor:
        """Global row indices the plan keeps, ascending (see :func:`select_per_frame`)."""
        per, k = self.layout.per_frame, self.per_frame_budget
        if per is None or k is None:
            return select_per_frame(self.scores, self.layout.index, self.budgets, 0, self.layout)
        _check_finite(self.scores)
        return _equal_frames(self.scores, per, min(k, per))


def _top_rows(scores: Tensor, k: int) -> Tensor:
    """``[R, k]`` column indices, ascending, of the ``k`` highest entries of each row of ``scores`` ``[R, T]``.

    A stable descending sort puts ties in index order, so the kept set never depends on top-k's
    unspecified tie order. (At a few hundred columns one sort costs less than the several small
    operations a threshold-from-top-k selection needs.)
    """
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return torch.sort(order, dim=1).values


def _check_finite(scores: Tensor) -> None:
    """ValueError unless every score is finite: NaN would sort as largest and silently keep arbitrary rows.

    A finite sum proves every term finite in one reduction; only an infinite or NaN sum (a bad
    score, or finite ones overflowing) looks at the rows.
    """
    if math.isfinite(float(scores.sum())):
        return
    finite = torch.isfinite(scores)
    if not bool(finite.all()):
        nan = int(torch.isnan(scores).sum())
        raise ValueError(
            f"scores must be finite, got {nan} NaN and {int((~finite).sum()) - nan} infinite of {scores.numel()}"
        )


def _equal_frames(scores: Tensor, per_frame: int, k: int) -> Tensor:
    """Rows kept when every frame holds ``per_frame`` rows of ``scores`` ``[N]`` and keeps ``k`` of them."""
    if k <= 0:
        return torch.zeros(0, dtype=torch.long, device=scores.device)
    local = _top_rows(scores.view(-1, per_frame), k)
    if scores.numel() == per_frame:  # one frame: its rows are the chunk's
        return local.reshape(-1)
    return (local + torch.arange(0, scores.numel(), per_frame, device=scores.device)[:, None]).reshape(-1)


def select_per_frame(
    scores: Tensor,
    frame: Tensor,
    budgets: Tensor,
    first_frame: int = 0,
    layout: FrameLayout | None = None,
) -> Tensor:
    """Global row indices of the ``budgets[f]`` highest-scoring rows of every frame, ascending.

    Ties go to the lower index, so results never depend on top-k's tie order. Rows must be
    frame-major, as in :class:`VisualTokens`; pass ``layout`` when the caller already has it.
    NaN or infinite scores are refused (ValueError; the pipeline names the strategy).
    """
    if scores.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=scores.device)
    _check_finite(scores)
    if layout is None:
        index = frame - first_frame
        counts = torch.bincount(index, minlength=budgets.numel())
        per = int(counts[0])
        layout = FrameLayout(index, counts, per if per > 0 and bool((counts == per).all()) else None)
    counts = layout.counts
    if layout.per_frame is not None and (budgets.numel() == 1 or bool((budgets == budgets[0]).all())):
        return _equal_frames(scores, layout.per_frame, min(int(budgets[0]), layout.per_frame))
    starts = torch.cumsum(counts, 0) - counts
    picked = []
    for f in range(budgets.numel()):
        n = int(counts[f])
        k = min(int(budgets[f]), n)
        if k <= 0:
            continue
        lo = int(starts[f])
        picked.append(_top_rows(scores[lo : lo + n].view(1, -1), k).reshape(-1) + lo)
    return torch.cat(picked) if picked else scores.new_zeros(0, dtype=torch.long)


class ScoringPruner(TokenStrategy):
    """Per-frame pruning as ``plan`` (pure) → select and gather (the base) → ``commit`` (state).

    Override :meth:`score` (with :class:`PerFrameParams`), or :meth:`plan` for budgets of your
    own; stateful pruners also override :meth:`commit`. :meth:`apply` is not meant to be overridden.
    """

    def __init__(self, params: StrategyParams | None = None, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        if type(self).plan is ScoringPruner.plan and self._fixed_budget() is None:
            raise TypeError(
                f"{type(self).__name__}: give its Params the PerFrameParams base (tokens_per_frame) "
                "or override plan() with budgets of its own"
            )

    def _fixed_budget(self) -> int | None:
        """``tokens_per_frame`` when the parameters declare one through :class:`PerFrameParams`."""
        return self.params.tokens_per_frame if isinstance(self.params, PerFrameParams) else None

    def planned_count(self, tokens_per_frame: int, frames: int) -> int | None:
        k = self._fixed_budget()
        return None if k is None else min(k, tokens_per_frame) * frames

    def check(self, info: StageInfo) -> None:
        k = self._fixed_budget()
        if k is not None and k > info.tokens_per_frame:
            raise BudgetError(
                f"{self.name}.tokens_per_frame = {k} is larger than the {info.tokens_per_frame} tokens a frame "
                f"has at {info.stage.value} on this model; use at most {info.tokens_per_frame}"
            )

    def frame_budgets(self, layout: FrameLayout) -> Tensor:
        """``[F]`` rows to keep per frame: ``min(tokens_per_frame, T_f)``."""
        k = self._fixed_budget()
        if k is None:
            raise TypeError(f"{type(self).__name__} has no tokens_per_frame; its plan() gives the budgets")
        if layout.per_frame is not None:  # every frame holds per_frame rows: no need to read counts
            return torch.full(
                (layout.num_frames,), min(k, layout.per_frame), dtype=torch.long, device=layout.device
            )
        return torch.clamp(layout.counts, max=k)

    def score(self, tokens: VisualTokens, state: Any, chunk: ChunkInfo) -> Tensor:
        """``[N]`` importance per row: higher is kept first."""
        raise NotImplementedError(f"{type(self).__name__} must implement score() or plan()")

    def plan(self, tokens: VisualTokens, state: Any, chunk: ChunkInfo) -> Plan:
        """The chunk's scores and budgets; must not change ``state`` (that is :meth:`commit`'s job)."""
        layout = FrameLayout.of(tokens)
        return self.budget_plan(self.score(tokens, state, chunk), layout)

    def budget_plan(self, scores: Tensor, layout: FrameLayout, update: Any = None) -> Plan:
        """The :class:`Plan` of ``scores`` ``[N]`` under :meth:`frame_budgets`, with ``per_frame_budget``
        filled in when those are the stock ``min(tokens_per_frame, T_f)`` (not overridden)."""
        fixed = type(self).frame_budgets is ScoringPruner.frame_budgets
        budget = self._fixed_budget() if fixed else None
        return Plan(scores, self.frame_budgets(layout), layout, update, per_frame_budget=budget)

    def commit(self, state: Any, plan: Plan) -> None:  # noqa: B027 - stateless pruners commit nothing
        """Write ``plan.update`` into ``state``; called once per chunk, after the gather succeeded."""

    def _checked(self, plan: Any, n: int) -> Plan:
        """``plan`` if it holds one score per row and one budget per frame, else a ValueError saying which
        (the pipeline reports it as a fault of this strategy, like non-finite scores)."""
        own = "score()" if type(self).plan is ScoringPruner.plan else "plan()"
        if not isinstance(plan, Plan):
            raise ValueError(f"plan() returned {type(plan).__name__}, expected a Plan")
        f = plan.layout.num_frames
        for what, value, want, source in (
            ("scores", plan.scores, n, own),
            ("budgets", plan.budgets, f, "plan()"),
        ):
            if not isinstance(value, Tensor):
                raise ValueError(
                    f"{source} returned {what} of type {type(value).__name__}, expected a tensor [{want}]"
                )
            if tuple(value.shape) != (want,):
                raise ValueError(
                    f"{source} returned {what} of shape {tuple(value.shape)}, expected [{want}] "
                    f"(one per {'token' if what == 'scores' else 'frame'} of the chunk)"
                )
        return plan

    def apply(self, tokens: VisualTokens, state: Any, chunk: ChunkInfo) -> VisualTokens:
        n = tokens.tokens.shape[0]
        if n == 0:
            return tokens
        plan = self._checked(self.plan(tokens, state, chunk), n)
        if plan.rows is not None:
            kept = tokens if plan.rows.numel() == n else tokens.take(plan.rows)
        elif plan.keeps_all():
            kept = tokens
        else:
            kept = tokens.take_ascending(plan.select())  # ascending by construction
        self.commit(state, plan)
        return kept
