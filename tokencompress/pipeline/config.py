"""Pipeline YAML → validated objects, with errors that name the field and the fix.

The grammar itself (one pydantic model built from a :class:`Registry`, so third-party
strategies validate exactly like built-ins) lives in :mod:`.pipeline_grammar`; this module
reads the file (refusing duplicate keys, directories and oversized files) and turns the
validated document into strategy instances.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..api.errors import ConfigError
from ..api.strategy import Strategy
from ..api.types import Stage, StreamConfig
from ..plugins.registry import Registry
from .grammar import (
    MAX_DEPTH,
    MAX_STEPS,
    TOP_KEYS,
    format_validation_error,
    json_schema,
    too_deep,
    validate,
)

__all__ = [
    "StreamConfig",
    "PipelineConfig",
    "load_config",
    "parse_config",
    "json_schema",
    "format_validation_error",
    "TOP_KEYS",
]


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


def parse_config(data: Any, registry: Registry, source: str = "pipeline") -> PipelineConfig:
    """Validate an already-loaded YAML/JSON mapping against the registry's grammar."""
    doc = validate(data, registry, source)
    stages: dict[Stage, list[Strategy]] = {}
    if doc.stages is not None:
        for stage in Stage:
            steps = getattr(doc.stages, stage.value) or []
            if stage.value not in doc.stages.model_fields_set:
                continue
            built = []
            for step in steps:
                cls = registry.strategy(step.strategy)
                fields = cls.Params.model_fields
                params = cls.Params.model_construct(
                    _fields_set=step.model_fields_set - {"strategy"},
                    **{k: getattr(step, k) for k in fields},
                )
                built.append(cls(params))
            stages[stage] = built
    return PipelineConfig(
        name=doc.name,
        target=doc.target,
        target_options=dict(doc.target_options or {}),
        stream=doc.stream or StreamConfig(),
        stages=stages,
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key given twice in one mapping instead of keeping the last,
    and values nested deeper than ``MAX_DEPTH`` (PyYAML composes nodes recursively: a 1 KB file
    of ``[[[[...`` would otherwise end in a ``RecursionError``)."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self._depth >= MAX_DEPTH:
            mark = self.peek_event().start_mark
            where = f"line {mark.line + 1}, column {mark.column + 1}"
            raise yaml.composer.ComposerError(None, None, too_deep(where), mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    loader.flatten_mapping(node)
    seen: dict[Any, str] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:  # an unhashable key: let the stock constructor report it
            continue
        mark = key_node.start_mark
        here = f"line {mark.line + 1}, column {mark.column + 1}"
        if first is not None:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key '{key}' at {here} (first given at {first}); keep one", mark
            )
        seen[key] = here
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)

MAX_FILE_BYTES = 1 << 20
"""A pipeline file is a few hundred bytes; anything over a megabyte is the wrong file."""


def load_config(source: str | Path, registry: Registry) -> PipelineConfig:
    """Read a pipeline YAML file (or, if ``source`` contains a newline, YAML text)."""
    if isinstance(source, str) and "\n" in source:
        text, label = source, "pipeline"
    else:
        path = Path(source)
        if path.is_dir():
            raise ConfigError(f"{path}: is a directory, not a pipeline file; give a .yaml file inside it")
        if not path.is_file():
            raise ConfigError(f"{path}: pipeline file not found")
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ConfigError(
                f"{path}: {size / 2**20:.1f} MiB is too large for a pipeline file (at most "
                f"{MAX_FILE_BYTES >> 20} MiB, {MAX_STEPS} steps); is this the right file?"
            )
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a text file; a pipeline is YAML (UTF-8)") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read pipeline file: {exc.strerror or exc}") from None
        label = str(path)
    if len(text) > MAX_FILE_BYTES:
        raise ConfigError(
            f"{label}: {len(text)} characters is too large for a pipeline ({MAX_STEPS} steps at most)"
        )
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if problem.startswith("duplicate key") or "levels deep" in problem:
            raise ConfigError(f"{label}: {problem}") from None
        raise ConfigError(f"{label}: invalid YAML{where}: {problem}") from None
    return parse_config(data, registry, label)
