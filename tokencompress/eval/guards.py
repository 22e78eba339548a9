"""What an annotation may ask of the harness: paths inside the data, sane times, bounded nesting.

Annotation files come from elsewhere, so nothing in them is trusted: a video path must resolve
(after symlinks) inside ``--data`` or the benchmark's video folder, a time must be a finite
number that leaves some video before the question, and no document may nest deeper than
:data:`MAX_DEPTH` levels (deeper input would exhaust Python's recursion while it is parsed).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..api.errors import TokenCompressError

__all__ = ["MAX_DEPTH", "RECORD_DEPTH", "check_json_depth", "depth", "inside", "realtime", "skip_summary"]

MAX_DEPTH = 64
"""A JSON annotation or a ``--prompts`` file nested deeper than this is refused as a whole."""
RECORD_DEPTH = 16
"""A record field nested deeper than this (real records hold a few levels) skips the record."""

_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


def check_json_depth(text: str, name: str | Path) -> None:
    """Refuse JSON ``text`` nested more than :data:`MAX_DEPTH` levels, before it is parsed."""
    level = 0
    for m in _TOKEN.finditer(text):
        c = m.group()
        if c in "[{":
            level += 1
            if level > MAX_DEPTH:
                line = text.count("\n", 0, m.start()) + 1
                raise TokenCompressError(
                    f"{name}: nested more than {MAX_DEPTH} levels deep (line {line}); "
                    f"an annotation is a list of flat records"
                )
        elif c in "]}":
            level -= 1


def depth(value: Any, limit: int = RECORD_DEPTH) -> int:
    """Nesting depth of lists and dicts in ``value`` (0 for a scalar), counted up to ``limit + 1``."""
    best, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (list, dict)):
            best = max(best, d)
            if best > limit:
                return best
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return best


def inside(roots: Sequence[Path], base: Path, rel: str, error: type[Exception]) -> str:
    """``base / rel`` (links kept, so names stay the annotation's), if it resolves inside a root.

    An absolute ``rel``, ``..`` parts or a symlink leading out of every root is refused with
    ``error`` (the loader's record error, so the record is skipped and counted).
    """
    if "\x00" in rel:
        raise error(f"video path {rel!r} holds a NUL byte")
    joined = base / rel
    try:
        real = joined.resolve()
        allowed = [r.resolve() for r in roots]
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise error(f"video path '{rel}' cannot be resolved ({exc})") from None
    if not any(real == r or real.is_relative_to(r) for r in allowed):
        raise error(f"video path '{rel}' leads outside {roots[0]}; paths must stay inside --data")
    return str(joined)


def realtime(value: Any, name: str, error: type[Exception]) -> int | float:
    """A question time in seconds: a finite number > 0 (0 or less leaves no video to see)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"field '{name}' has type {type(value).__name__}")
    if not math.isfinite(value):
        raise error(f"{name} {value} is not a finite number")
    if value <= 0:
        raise error(f"{name} {value:g} is out of range (must be > 0: the question needs video before it)")
    return value


def skip_summary(skipped: dict[str, int], ids: dict[str, list[str]], show: int = 3) -> str:
    """``none``, or the count and, per reason, the first ``show`` ids."""
    if not skipped:
        return "none"
    parts = []
    for reason, n in skipped.items():
        where = ids.get(reason, [])
        more = f" and {len(where) - show} more" if len(where) > show else ""
        parts.append(f"{n} x {reason} ({', '.join(where[:show])}{more})")
    return f"{sum(skipped.values())}: " + "; ".join(parts)
