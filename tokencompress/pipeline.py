"""Pipelines: a validated recipe, bound to a model through its target, applied reversibly.

``Pipeline`` is the recipe (strategies per stage, stream shape). ``pipeline.apply(model)`` binds
it to a model: it resolves the target, refuses combinations the target cannot run (naming the
strategy, the target and the unmet need), installs the block hooks and yields a
:class:`BoundPipeline` that opens streams. On exit the model is exactly as it was.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from torch import nn

from .block_patch import BlockPatch
from .errors import CompatibilityError, ConfigError
from .hooks.events import StageEvent
from .pipeline_config import PipelineConfig, load_config, parse_config
from .pipeline_grammar import format_validation_error, to_json
from .registry import Registry
from .stages import Stage
from .strategy import BlockStrategy, ChunkInfo, Strategy, TokenStrategy
from .target import Target
from .timing import now
from .tokens import VisualTokens

if TYPE_CHECKING:
    from .session import Stream

__all__ = ["Pipeline", "BoundPipeline"]


class Pipeline:
    """A pipeline recipe; cheap to build, holds no model and no stream state."""

    def __init__(self, config: PipelineConfig, registry: Registry | None = None) -> None:
        self.config = config
        self.registry = registry if registry is not None else Registry()

    @classmethod
    def from_yaml(cls, source: str | Path, registry: Registry | None = None) -> Pipeline:
        registry = registry if registry is not None else Registry()
        return cls(load_config(source, registry), registry)

    @classmethod
    def from_dict(cls, data: dict[str, Any], registry: Registry | None = None) -> Pipeline:
        registry = registry if registry is not None else Registry()
        return cls(parse_config(data, registry), registry)

    @property
    def name(self) -> str:
        return self.config.name

    def bind(self, model: nn.Module) -> BoundPipeline:
        """Resolve the target for ``model`` and check every strategy against it (no patching yet)."""
        target_cls = self.registry.resolve_target(model, self.config.target)
        try:
            options = target_cls.Options.model_validate_json(
                to_json(self.config.target_options, "target_options"), strict=True
            )
        except ValidationError as err:
            raise ConfigError(
                format_validation_error("target_options", err, list(target_cls.Options.model_fields))
            ) from None
        target = target_cls(model, options)
        target.configure_stream(self.config.stream)
        check_compatibility(self.config, target)
        return BoundPipeline(self, target)

    @contextmanager
    def apply(self, model: nn.Module) -> Iterator[BoundPipeline]:
        """Install the pipeline on ``model`` for the ``with`` block; restores every forward on exit."""
        bound = self.bind(model)
        with bound.patch:
            yield bound


def check_compatibility(config: PipelineConfig, target: Target) -> None:
    """Refuse at build time what would fail (or silently misbehave) at run time."""
    infos = target.stage_info()
    for declared, steps in config.stages.items():
        for i, strategy in enumerate(steps):
            where = f"stages.{declared.value}[{i}]"
            stage = strategy.effective_stage(infos)
            if stage not in target.provides or stage not in infos:
                raise CompatibilityError(
                    f"{where}: strategy '{strategy.name}' runs at {stage.value}, which target '{target.name}' does not expose"
                )
            missing = strategy.needs - target.provides[stage]
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
            later = steps[i + 1 :]
            if later and getattr(strategy, "computes_layer", False):
                raise CompatibilityError(
                    f"{where}: strategy '{strategy.name}' computes the whole encoder layer itself, so "
                    f"'{later[0].name}' after it in {declared.value} would never run; put '{strategy.name}' last"
                )


class BoundPipeline:
    """A pipeline bound to one model through its target; opens any number of independent streams."""

    def __init__(self, pipeline: Pipeline, target: Target) -> None:
        self.pipeline = pipeline
        self.config = pipeline.config
        self.registry = pipeline.registry
        self.target = target
        self.steps: list[Strategy] = [s for stage in Stage for s in self.config.strategies(stage)]
        infos = target.stage_info()
        self.by_stage: dict[Stage, list[Strategy]] = {stage: [] for stage in Stage}
        self.notes: list[str] = []
        for strategy in self.steps:
            where = strategy.effective_stage(infos)
            self.by_stage[where].append(strategy)
            if where != strategy.stage:
                self.notes.append(
                    f"{strategy.name} ({strategy.stage.value}) runs on target {target.name}'s {where.value} grid"
                )
        # strategies moved to a later stage conceptually precede that stage's own ones
        for stage, steps in self.by_stage.items():
            steps.sort(key=lambda s, st=stage: s.stage == st)
        block = [s for s in self.by_stage[Stage.PRE_VIT_BLOCK] if isinstance(s, BlockStrategy)]
        n_layers = len(target.vit_layers())
        probes = sorted({i for s in self.steps for i in s.probe_layers(n_layers)})
        layers = target.vit_layers() if (block or probes) else []
        self.patch = BlockPatch(layers, [target.block_adapter(layer) for layer in layers], block, probes)
        self._index = {id(s): i for i, s in enumerate(self.steps)}
        self._observed = self.registry.has_observers()
        self._next_stream_id = 0

    @property
    def model(self) -> nn.Module:
        return self.target.model

    def stream(self, **kwargs: Any) -> Stream:
        """A new stream with its own strategy states and KV cache (see :class:`Stream`)."""
        from .session import Stream

        self._next_stream_id += 1
        return Stream(self, stream_id=self._next_stream_id, **kwargs)

    def new_states(self) -> list[Any]:
        return [s.new_state() for s in self.steps]

    def block_states(self, states: Sequence[Any]) -> list[Any]:
        """The entries of a stream's ``states`` that belong to the installed block strategies."""
        return [states[self._index[id(s)]] for s in self.patch.strategies]

    def planned_tokens(self, stage: Stage, frames: int) -> int | None:
        """Tokens a chunk of ``frames`` video frames leaves ``stage`` with, if known from shapes alone."""
        frames = self.target.token_frames(frames)
        n = self.target.stage_info()[stage].tokens_per_frame * frames
        for s in self.by_stage[stage]:
            per = n // frames if frames else 0
            nxt = s.planned_count(per, frames)
            if nxt is None:
                return None
            n = nxt
        return n

    def run_stage(
        self,
        stage: Stage,
        tokens: VisualTokens,
        states: Sequence[Any],
        chunk: ChunkInfo,
        record: dict[str, Any],
        stream_id: int = 0,
    ) -> VisualTokens:
        """Apply ``stage``'s strategies in YAML order, recording counts and time in ``record``."""
        start = now(self.target.device)
        record.setdefault("stage_start", {}).setdefault(stage, start)
        n_in = tokens.count
        for strategy in self.by_stage[stage]:
            assert isinstance(strategy, TokenStrategy)
            tokens = strategy.apply(tokens, states[self._index[id(strategy)]], chunk)
        seconds = now(self.target.device) - start
        record.setdefault("tokens", {})[stage] = (n_in, tokens.count)
        record.setdefault("seconds", {})[stage] = seconds
        self.observe(stage, chunk, n_in, tokens.count, seconds, stream_id)
        return tokens

    def observe(
        self, stage: Stage, chunk: ChunkInfo, n_in: int, n_out: int, seconds: float, stream_id: int
    ) -> None:
        """Tell observer plugins a stage finished (skipped entirely when none is installed)."""
        if self._observed:
            self.registry.notify(StageEvent(stream_id, chunk.index, stage, n_in, n_out, seconds))
