"""Where each strategy of a pipeline runs on one target, decided and checked once at build time.

A strategy normally runs at its declared stage; one that must select on a target's pooled grid
(VisionZip ``after_pool`` on LLaVA-OV) moves to ``pre_prefill`` and runs ahead of that stage's
own strategies. Everything that would fail, or silently misbehave, at run time is refused here
with a message naming the step, the strategy, the target and what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..api.errors import CompatibilityError
from ..api.strategy import Strategy
from ..api.target import Target
from ..api.types import Stage, provided_capabilities
from .config import PipelineConfig

__all__ = ["Placement", "place_strategies", "TOKEN_PATH"]

TOKEN_PATH = (Stage.PRE_VIT_BLOCK, Stage.POST_VIT, Stage.PRE_PREFILL)
"""The stages a chunk's visual tokens flow through; kv_cache acts on the decoder's memory instead
(:mod:`tokencompress.pipeline.kv_placement`)."""


@dataclass(frozen=True)
class Placement:
    """The strategies each stage runs on this target, in run order, and the moves made."""

    by_stage: dict[Stage, list[Strategy]]
    notes: list[str] = field(default_factory=list)
    """One line per strategy that runs at another stage than it declares."""


def place_strategies(config: PipelineConfig, target: Target) -> Placement:
    """Resolve every step's effective stage on ``target`` and refuse what the target cannot run."""
    infos = target.stage_info()
    by_stage: dict[Stage, list[Strategy]] = {stage: [] for stage in TOKEN_PATH}
    notes: list[str] = []
    for declared in TOKEN_PATH:
        steps = config.strategies(declared)
        for i, strategy in enumerate(steps):
            where = f"stages.{declared.value}[{i}]"
            stage = strategy.effective_stage(infos)
            _check_step(where, strategy, stage, target, steps[i + 1 :])
            by_stage[stage].append(strategy)
            if stage != strategy.stage:
                notes.append(
                    f"{strategy.name} ({strategy.stage.value}) runs on target {target.name}'s {stage.value} grid"
                )
    # strategies moved to a later stage conceptually precede that stage's own ones
    for stage, steps in by_stage.items():
        steps.sort(key=lambda s, st=stage: s.stage == st)
    return Placement(by_stage, notes)


def _check_step(where: str, strategy: Strategy, stage: Stage, target: Target, later: list[Strategy]) -> None:
    infos = target.stage_info()
    if stage not in target.provides or stage not in infos:
        raise CompatibilityError(
            f"{where}: strategy '{strategy.name}' runs at {stage.value}, which target '{target.name}' does not expose"
        )
    missing = strategy.needs - provided_capabilities(target.provides[stage])
    if missing:
        raise CompatibilityError(
            f"{where}: strategy '{strategy.name}' needs {', '.join(sorted(m.value for m in missing))} at "
            f"{stage.value}, which target '{target.name}' cannot provide"
        )
    info = infos[stage]
    if info.count_locked and strategy.changes_count:
        raise CompatibilityError(
            f"{where}: strategy '{strategy.name}' changes the token count at {stage.value}, but target "
            f"'{target.name}' needs every token there (its pooling/merger reshapes the full grid); "
            f"run it at pre_prefill instead"
        )
    strategy.check(info)
    rival = next((s for s in later if getattr(s, "computes_layer", False)), None)
    if rival is not None and getattr(strategy, "computes_layer", False):
        # neither order can work: the advice must not depend on which one came first
        a, b = sorted((strategy.name, rival.name))
        raise CompatibilityError(
            f"{where}: strategies '{a}' and '{b}' both compute the whole encoder layer themselves, so "
            f"one {strategy.stage.value} stage cannot run both in either order; keep one of them"
        )
    if later and getattr(strategy, "computes_layer", False):
        raise CompatibilityError(
            f"{where}: strategy '{strategy.name}' computes the whole encoder layer itself, so "
            f"'{later[0].name}' after it in {strategy.stage.value} would never run; put '{strategy.name}' last"
        )
