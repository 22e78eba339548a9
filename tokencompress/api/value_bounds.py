"""One bound for every number a pipeline holds: finite, at most ``MAX_MAGNITUDE``, and not so small
that float32 rounds it to zero.

Strategies compute in float32 and size buffers from integers, so a value YAML accepts can still be
one no stage can hold: ``temperature: 1e-46`` is 0 in float32 (a softmax of NaNs), ``fps: 1e308``
overflows ``ceil``, ``n_local: 10**30`` is no window length. The grammar (every strategy's step,
third-party ones included), :class:`~tokencompress.api.strategy.StrategyParams` (Python callers) and
:class:`~tokencompress.api.types.StreamConfig` refuse such values field by field, so the error names
the field's path (``stages.pre_prefill[0].temperature: ...``).
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticCustomError

__all__ = ["MAX_MAGNITUDE", "FLOAT32_TINY", "ERROR_TYPE", "number_problem", "bounded"]

MAX_MAGNITUDE = 1e9
"""The largest magnitude any configuration number may have (integers and floats alike): above
every real count, window or rate, below int32's 2**31 and far inside float32's range."""
FLOAT32_TINY = 1.1754943508222875e-38
"""float32's smallest normal number: a nonzero value below it in magnitude computes as 0 (or a
denormal) in a float32 kernel, so it is refused rather than silently turned into zero."""
ERROR_TYPE = "number_bound"
"""The pydantic error type of a refused value; :mod:`.pipeline_grammar` prints its message as is."""


def number_problem(value: Any) -> str | None:
    """Why ``value`` (an int or float) is out of bounds, or None; ``bool`` and non-numbers pass."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        shown = ".nan" if value != value else (".inf" if value > 0 else "-.inf")
        return f"expected a finite number (not .inf or .nan) (got {shown})"
    if abs(value) > MAX_MAGNITUDE:
        return f"{value!r} is too large; configuration numbers are at most {MAX_MAGNITUDE:g} in magnitude"
    if isinstance(value, float) and value != 0 and abs(value) < FLOAT32_TINY:
        return (
            f"{value!r} is too small: float32 computes it as 0; a nonzero number must be at least "
            f"{FLOAT32_TINY:.3g} in magnitude"
        )
    return None


def _first_problem(value: Any, where: str = "") -> tuple[str, str] | None:
    """(sub-path such as ``[2]``, problem) of the first bad number inside ``value``."""
    problem = number_problem(value)
    if problem is not None:
        return where, problem
    if isinstance(value, (list, tuple)):
        items: Any = enumerate(value)
    elif isinstance(value, dict):
        items = value.items()
    elif isinstance(value, BaseModel):
        items = ((k, getattr(value, k)) for k in type(value).model_fields)
    else:
        return None
    for key, item in items:
        found = _first_problem(item, f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}")
        if found is not None:
            return found
    return None


def bounded(value: Any) -> Any:
    """A pydantic ``field_validator("*")`` body: ``value`` unchanged, or a ``number_bound`` error
    whose ``ctx["sub"]`` is the place inside the field (``[2]`` of a list) and whose message says why."""
    found = _first_problem(value)
    if found is not None:
        sub, problem = found
        raise PydanticCustomError(ERROR_TYPE, problem, {"sub": sub})
    return value
