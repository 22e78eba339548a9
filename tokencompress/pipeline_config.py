"""Pipeline YAML → validated objects, with errors that name the field and the fix.

Strategies are looked up in a :class:`Registry` after plugin discovery, so third-party
strategies validate exactly like built-ins. Each step's parameters are validated by that
strategy's own pydantic ``Params`` (``extra="forbid"``); pydantic's errors are rewritten into
one line with a dotted path such as ``stages.pre_prefill[0].tokens_per_frame``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import ConfigDict, Field, ValidationError, create_model

from .errors import ConfigError
from .registry import Registry, close_matches
from .strategy import Strategy
from .types import Stage, StreamConfig

__all__ = ["StreamConfig", "PipelineConfig", "load_config", "parse_config", "json_schema"]

TOP_KEYS = ("name", "target", "target_options", "stream", "stages")


@dataclass
class PipelineConfig:
    """A validated pipeline description (strategies instantiated, target not yet resolved)."""

    name: str = "pipeline"
    target: str = "auto"
    target_options: dict[str, Any] = field(default_factory=dict)
    stream: StreamConfig = field(default_factory=StreamConfig)
    stages: dict[Stage, list[Strategy]] = field(default_factory=dict)

    def strategies(self, stage: Stage) -> list[Strategy]:
        return self.stages.get(stage, [])

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "target": self.target,
            "target_options": dict(self.target_options),
            "stream": self.stream.model_dump(),
            "stages": {
                st.value: [{"strategy": s.name, **s.params.model_dump(mode="json")} for s in steps]
                for st, steps in self.stages.items()
                if steps
            },
        }


def format_validation_error(prefix: str, err: ValidationError, allowed: list[str] | None = None) -> str:
    """First pydantic error as ``prefix.field: message``."""
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"])
    path = f"{prefix}.{loc}" if loc else prefix
    if e["type"] == "extra_forbidden":
        key = str(e["loc"][-1])
        hint = close_matches(key, allowed or [])
        return f"{path}: unknown key '{key}'{hint}; allowed: {', '.join(allowed or [])}"
    if e["type"] == "missing":
        return f"{path}: required field is missing"
    return f"{path}: {e['msg']} (got {e.get('input')!r})"


def _strategy_fields(cls: type[Strategy]) -> list[str]:
    return list(cls.Params.model_fields)


def _parse_step(path: str, stage: Stage, raw: Any, registry: Registry) -> Strategy:
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: expected a mapping like {{strategy: NAME, ...}}, got {type(raw).__name__}"
        )
    if "strategy" not in raw:
        raise ConfigError(f"{path}: missing 'strategy' (one of {', '.join(sorted(registry.strategies))})")
    name = raw["strategy"]
    if not isinstance(name, str):
        raise ConfigError(f"{path}.strategy: expected a name, got {name!r}")
    try:
        cls = registry.strategy(name)
    except ConfigError as exc:
        raise ConfigError(f"{path}.strategy: {exc}") from None
    if cls.stage != stage:
        raise ConfigError(
            f"{path}: strategy '{name}' runs at stage '{cls.stage.value}', not '{stage.value}'; "
            f"move it under stages.{cls.stage.value}"
        )
    values = {k: v for k, v in raw.items() if k != "strategy"}
    try:
        params = cls.Params.model_validate(values)
    except ValidationError as err:
        raise ConfigError(format_validation_error(path, err, _strategy_fields(cls))) from None
    return cls(params)


def parse_config(data: Any, registry: Registry, source: str = "pipeline") -> PipelineConfig:
    """Validate an already-loaded YAML/JSON mapping."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with keys {', '.join(TOP_KEYS)}")
    for key in data:
        if key not in TOP_KEYS:
            raise ConfigError(
                f"{source}: unknown key '{key}'{close_matches(str(key), TOP_KEYS)}; allowed: {', '.join(TOP_KEYS)}"
            )
    name = data.get("name", "pipeline")
    target = data.get("target", "auto")
    if not isinstance(target, str):
        raise ConfigError(f"target: expected a target name or 'auto', got {target!r}")
    if target != "auto":
        try:
            registry.target(target)
        except ConfigError as exc:
            raise ConfigError(f"target: {exc}") from None
    options = data.get("target_options") or {}
    if not isinstance(options, dict):
        raise ConfigError("target_options: expected a mapping")
    try:
        stream = StreamConfig.model_validate(data.get("stream") or {})
    except ValidationError as err:
        raise ConfigError(format_validation_error("stream", err, list(StreamConfig.model_fields))) from None
    raw_stages = data.get("stages") or {}
    if not isinstance(raw_stages, dict):
        raise ConfigError("stages: expected a mapping of stage name to a list of steps")
    stages: dict[Stage, list[Strategy]] = {}
    names = [s.value for s in Stage]
    for key, steps in raw_stages.items():
        if key not in names:
            raise ConfigError(
                f"stages: unknown stage '{key}'{close_matches(str(key), names)}; stages: {', '.join(names)}"
            )
        stage = Stage(key)
        if steps is None:
            steps = []
        if not isinstance(steps, list):
            raise ConfigError(f"stages.{key}: expected a list of steps")
        stages[stage] = [
            _parse_step(f"stages.{key}[{i}]", stage, raw, registry) for i, raw in enumerate(steps)
        ]
    return PipelineConfig(
        name=str(name), target=target, target_options=dict(options), stream=stream, stages=stages
    )


def load_config(source: str | Path, registry: Registry) -> PipelineConfig:
    """Read a pipeline YAML file (or, if ``source`` contains a newline, YAML text)."""
    if isinstance(source, str) and "\n" in source:
        text, label = source, "pipeline"
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"{path}: pipeline file not found")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read pipeline file: {exc}") from None
        label = str(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{label}: invalid YAML{where}: {problem}") from None
    return parse_config(data, registry, label)


def json_schema(registry: Registry) -> dict[str, Any]:
    """JSON Schema of the pipeline file for editors, with every registered strategy."""
    per_stage: dict[str, Any] = {}
    for stage in Stage:
        variants = []
        for name, reg in sorted(registry.strategies.items()):
            if reg.cls.stage != stage:
                continue
            variants.append(
                create_model(
                    f"{reg.cls.__name__}Step",
                    __base__=reg.cls.Params,
                    __doc__=reg.cls.summary or reg.cls.__doc__,
                    strategy=(Literal[name], ...),  # type: ignore[valid-type]
                )
            )
        if not variants:  # no strategy registered for this stage: only an empty list is valid
            per_stage[stage.value] = (Annotated[list[Any], Field(max_length=0)] | None, None)
            continue
        union = (
            variants[0]
            if len(variants) == 1
            else Annotated[Union[tuple(variants)], Field(discriminator="strategy")]  # noqa: UP007
        )
        per_stage[stage.value] = (list[union] | None, None)  # type: ignore[valid-type]
    stages_model = create_model("Stages", __config__=ConfigDict(extra="forbid"), **per_stage)
    target_names = ["auto", *sorted(registry.targets)]
    model = create_model(
        "Pipeline",
        __config__=ConfigDict(extra="forbid"),
        name=(str, "pipeline"),
        target=(Literal[tuple(target_names)], "auto"),  # type: ignore[valid-type]
        target_options=(dict[str, Any], {}),
        stream=(StreamConfig, StreamConfig()),
        stages=(stages_model, None),
    )
    return model.model_json_schema()
