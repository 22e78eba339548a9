"""The pipeline grammar: one pydantic model, built from a registry, that validates and documents.

The same model checks a pipeline mapping and produces ``tokencompress schema``, so what an
editor accepts and what ``run`` accepts cannot drift. Validation runs in pydantic's strict
JSON mode: ``true`` is not an integer, ``"3"`` is not a number, while lists still fill tuple
fields and strings fill ``Literal`` fields as they do in YAML. Pydantic's error locations
(with union tags such as ``stc_pruner`` or ``constrained-int``) are rewritten into the path a
user reads in the YAML: ``stages.pre_prefill[0].tokens_per_frame: ...``.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from ..api.errors import ConfigError, PluginError
from ..api.types import Stage, StreamConfig
from ..api.value_bounds import ERROR_TYPE, bounded
from ..plugins.registry import Registry, close_matches

__all__ = [
    "MAX_DEPTH",
    "MAX_STEPS",
    "MAX_VALUES",
    "TOP_KEYS",
    "explain",
    "format_validation_error",
    "json_schema",
    "pipeline_model",
    "to_json",
    "validate",
]

TOP_KEYS = ("name", "target", "target_options", "stream", "stages")
MAX_STEPS = 64
"""Steps one pipeline may hold in all stages together; real pipelines have one to four."""
MAX_VALUES = 100_000
"""Values (mappings, lists, scalars, aliases expanded) one pipeline may hold."""
MAX_DEPTH = 32
"""Levels of nested mappings and lists a pipeline may have; real ones have five
(``stages`` → stage → step list → step → a parameter's list)."""

_CACHE_ATTR = "_tokencompress_pipeline_model"
_TYPE_WORDS = {
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "string_type": "expected a string",
    "list_type": "expected a list",
    "tuple_type": "expected a list",
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
    "finite_number": "expected a finite number (not .inf or .nan)",
    "int_from_float": "expected an integer",
}
_LABEL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PYDANTIC_LABELS = {"int", "float", "str", "bool", "list", "tuple", "dict", "set", "none", "nullable"}


def _step_model(name: str, cls: type) -> type[BaseModel]:
    """The strategy's own ``Params`` plus the ``strategy`` tag that selects it, with every number
    bounded (:mod:`.value_bounds`) whatever base a third-party ``Params`` has."""
    return create_model(
        f"{cls.__name__}Step",
        __base__=cls.Params,
        __doc__=cls.summary or cls.__doc__,
        __validators__={"_tokencompress_bounded": field_validator("*")(bounded)},
        strategy=(Literal[name], ...),  # type: ignore[valid-type]
    )


def _build(registry: Registry) -> type[BaseModel]:
    per_stage: dict[str, Any] = {}
    for stage in Stage:
        variants = [
            _step_model(name, reg.cls)
            for name, reg in sorted(registry.strategies.items())
            if reg.cls.stage == stage
        ]
        if not variants:  # no strategy registered for this stage: only an empty list is valid
            per_stage[stage.value] = (Annotated[list[Any], Field(max_length=0)] | None, None)
            continue
        step = Annotated[Union[tuple(variants)], Field(discriminator="strategy")]  # noqa: UP007
        per_stage[stage.value] = (Annotated[list[step], Field(max_length=MAX_STEPS)] | None, None)  # type: ignore[valid-type]
    stages_model = create_model("Stages", __config__=ConfigDict(extra="forbid"), **per_stage)
    target_names = ["auto", *sorted(registry.targets)]
    return create_model(
        "Pipeline",
        __config__=ConfigDict(extra="forbid"),
        name=(str, "pipeline"),
        target=(Literal[tuple(target_names)], "auto"),  # type: ignore[valid-type]
        target_options=(dict[str, Any] | None, None),
        stream=(StreamConfig | None, None),
        stages=(stages_model | None, None),
    )


def pipeline_model(registry: Registry) -> type[BaseModel]:
    """The grammar for ``registry``'s strategies and targets, built once per registry."""
    model = registry.__dict__.get(_CACHE_ATTR)
    if model is None:
        model = _build(registry)
        setattr(registry, _CACHE_ATTR, model)
    return model


def json_schema(registry: Registry) -> dict[str, Any]:
    """JSON Schema of the pipeline file for editors, with every registered strategy."""
    return pipeline_model(registry).model_json_schema()


# ------------------------------------------------------------------ validation
def _count_values(data: Any, source: str) -> None:
    """Refuse huge documents before pydantic (or an alias bomb) spends minutes and gigabytes."""
    seen = 0
    todo = [(data, 0)]
    while todo:
        node, depth = todo.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise ConfigError(
                f"{source}: the pipeline holds more than {MAX_VALUES} values; a pipeline has at most "
                f"{MAX_STEPS} steps of a few parameters each (is this the right file?)"
            )
        children = (
            node.values() if isinstance(node, dict) else node if isinstance(node, (list, tuple)) else ()
        )
        if children and depth >= MAX_DEPTH:
            raise ConfigError(too_deep(source))
        todo.extend((child, depth + 1) for child in children)
    stages = data.get("stages") if isinstance(data, dict) else None
    if isinstance(stages, dict):
        total = sum(len(v) for v in stages.values() if isinstance(v, list))
        if total > MAX_STEPS:
            raise ConfigError(
                f"stages: {total} steps in all; a pipeline has at most {MAX_STEPS} (split it, or check "
                "for a generated list gone wrong)"
            )


def too_deep(where: str) -> str:
    """The message for values nested more than :data:`MAX_DEPTH` levels deep."""
    return (
        f"{where}: values nested more than {MAX_DEPTH} levels deep; a pipeline needs about five "
        "(is this the right file?)"
    )


def _json_default(value: Any) -> Any:
    item = getattr(value, "item", None)  # numpy and torch scalars
    if callable(item):
        return item()
    return str(value)  # dates and other YAML scalars: refused by the grammar as the wrong type


def to_json(data: Any, source: str) -> str:
    """Plain values as JSON text, for pydantic's strict JSON mode (NaN and infinities kept)."""
    try:
        return json.dumps(data, default=_json_default, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: not a plain mapping of YAML values: {exc}") from None


def validate(data: Any, registry: Registry, source: str = "pipeline") -> BaseModel:
    """``data`` (a loaded YAML/JSON mapping) checked against the grammar, or one ConfigError line."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with keys {', '.join(TOP_KEYS)}")
    _count_values(data, source)
    text = to_json(data, source)
    try:
        return pipeline_model(registry).model_validate_json(text, strict=True)
    except ValidationError as err:
        raise ConfigError(explain(err, registry, source)) from None


def _yaml_path(loc: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]]:
    """Dotted YAML path of a pydantic location, without the union tags pydantic inserts."""
    parts: list[Any] = []
    rest = list(loc)
    if rest[:1] == ["stages"] and len(rest) >= 3 and isinstance(rest[2], int):
        parts, rest = rest[:3], rest[4:]  # rest[3] is the discriminator tag
    for p in rest:
        if isinstance(p, int) or (_LABEL.match(str(p)) and str(p) not in _PYDANTIC_LABELS):
            parts.append(p)
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out, tuple(parts)


def _step_fields(registry: Registry, name: str) -> list[str]:
    reg = registry.strategies.get(name)
    return list(reg.cls.Params.model_fields) if reg else []


def _message(e: dict[str, Any], registry: Registry, source: str) -> str:
    path, parts = _yaml_path(e["loc"])
    kind = e["type"]
    where = path or source
    if kind == "extra_forbidden":
        key = str(parts[-1])
        if len(parts) == 1:
            allowed = list(TOP_KEYS)
            return (
                f"{source}: unknown key '{key}'{close_matches(key, allowed)}; allowed: {', '.join(allowed)}"
            )
        if parts[0] == "stages" and len(parts) == 2:
            names = [s.value for s in Stage]
            return f"stages: unknown stage '{key}'{close_matches(key, names)}; stages: {', '.join(names)}"
        if parts[0] == "stream":
            allowed = list(StreamConfig.model_fields)
        else:
            allowed = _step_fields(registry, str(e["loc"][3])) if parts[0] == "stages" else []
        return f"{path}: unknown key '{key}'{close_matches(key, allowed)}; allowed: {', '.join(allowed)}"
    if kind == "missing":
        return f"{where}: required field is missing"
    if kind == ERROR_TYPE:
        return f"{where}{e.get('ctx', {}).get('sub', '')}: {e['msg']}"
    if kind == "union_tag_not_found":
        return f"{where}: missing 'strategy' (one of {', '.join(sorted(registry.strategies))})"
    if kind == "union_tag_invalid" or (kind == "literal_error" and parts and parts[-1] == "strategy"):
        return _strategy_message(path if kind == "literal_error" else f"{path}.strategy", e, registry)
    if kind == "literal_error" and parts == ("target",):
        if not isinstance(e.get("input"), str):
            return f"target: expected a target name or 'auto', got {_yaml_value(e.get('input'))}"
        try:
            registry.target(str(e.get("input")))
        except ConfigError as exc:
            return f"target: {exc}"
    if kind in ("too_long",) and parts[:1] == ("stages",):
        return f"{path}: {len(e.get('input') or [])} steps; a stage has at most {MAX_STEPS}"
    if kind == "dict_type" and parts[:1] == ("stages",) and len(parts) == 3:
        got = _json_word(e.get("input"))
        return f"{path}: expected a mapping like {{strategy: NAME, ...}}, got {got}"
    if kind == "list_type" and parts[:1] == ("stages",) and len(parts) == 2:
        return f"{path}: expected a list of steps"
    if kind in ("dict_type", "model_type") and parts == ("stages",):
        return "stages: expected a mapping of stage name to a list of steps"
    return f"{where}: {_words(e)} (got {_yaml_value(e.get('input'))})"


def _words(e: dict[str, Any]) -> str:
    """pydantic's message in the grammar's voice ("must be greater than 0", "expected a list")."""
    if e["type"] in _TYPE_WORDS:
        return _TYPE_WORDS[e["type"]]
    if e["type"] == "literal_error":
        return f"expected one of {e.get('ctx', {}).get('expected', '')}"
    msg = str(e["msg"])
    return "must be " + msg[len("Input should be ") :] if msg.startswith("Input should be ") else msg


def _strategy_message(path: str, e: dict[str, Any], registry: Registry) -> str:
    name = e.get("input")
    name = name.get("strategy") if isinstance(name, dict) else name
    if not isinstance(name, str):
        return f"{path}: expected a strategy name, got {_yaml_value(name)}"
    stage = path.split(".")[1].split("[")[0] if path.startswith("stages.") else ""
    reg = registry.strategies.get(name)
    if reg is not None and reg.cls.stage.value != stage:
        step = path.rsplit(".", 1)[0]
        return (
            f"{step}: strategy '{name}' runs at stage '{reg.cls.stage.value}', not '{stage}'; "
            f"move it under stages.{reg.cls.stage.value}"
        )
    try:
        registry.strategy(name)
    except (ConfigError, PluginError) as exc:
        return f"{path}: {exc}"
    return f"{path}: strategy '{name}' is not allowed here"


def _json_word(value: Any) -> str:
    return {str: "str", int: "int", float: "float", bool: "bool", list: "list"}.get(type(value), "null")


def _yaml_value(value: Any) -> str:
    """Inputs as YAML spells them (``true``, ``.inf``), since that is what the user typed."""
    if value is True or value is False:
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, float) and value != value:
        return ".nan"
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return ".inf" if value > 0 else "-.inf"
    return repr(value)


def explain(err: ValidationError, registry: Registry, source: str = "pipeline") -> str:
    """The first pydantic error as one line; union alternatives failing at one path are joined."""
    errors = err.errors()
    first = _message(errors[0], registry, source)
    if errors[0]["type"] not in _TYPE_WORDS:
        return first
    path = _yaml_path(errors[0]["loc"])[0]
    words = [
        _TYPE_WORDS[e["type"]] for e in errors if e["type"] in _TYPE_WORDS and _yaml_path(e["loc"])[0] == path
    ]
    if len(words) < 2:
        return first
    unique = list(dict.fromkeys(w.removeprefix("expected ") for w in words))
    return f"{path or source}: expected {' or '.join(unique)} (got {_yaml_value(errors[0].get('input'))})"


def format_validation_error(prefix: str, err: ValidationError, allowed: list[str] | None = None) -> str:
    """First error of a flat options model (``target_options``, ``stream``) as ``prefix.field: ...``."""
    e = err.errors()[0]
    loc = _yaml_path(e["loc"])[0]
    path = f"{prefix}.{loc}" if loc else prefix
    if e["type"] == "extra_forbidden":
        key = str(e["loc"][-1])
        return f"{path}: unknown key '{key}'{close_matches(key, allowed or [])}; allowed: {', '.join(allowed or [])}"
    if e["type"] == "missing":
        return f"{path}: required field is missing"
    if e["type"] == ERROR_TYPE:
        return f"{path}{e.get('ctx', {}).get('sub', '')}: {e['msg']}"
    return f"{path}: {_words(e)} (got {_yaml_value(e.get('input'))})"
