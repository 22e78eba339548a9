"""What every benchmark loader shares: options, skip counting, layout checks, video probing."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..api.errors import TokenCompressError, VideoError
from .guards import RECORD_DEPTH, check_json_depth, depth
from .prompts import Prompts, load_prompts

__all__ = ["LoadOptions", "Skips", "Durations", "require", "read_json", "RecordError"]


class RecordError(Exception):
    """An annotation record the loader cannot use (missing field, unknown task)."""


@dataclass
class LoadOptions:
    tasks: list[str] | None = None
    limit: int | None = None
    strict: bool = False
    context: float = -1.0
    """StreamingBench context seconds (-1: from 0)."""
    prompts: Prompts = field(default_factory=load_prompts)


class Skips:
    """Counts skipped records by reason; under ``strict`` the first one is an error."""

    def __init__(self, strict: bool, source: str) -> None:
        self.strict = strict
        self.source = source
        self.counts: Counter[str] = Counter()
        self.ids: dict[str, list[str]] = {}
        """Reason -> where each skipped record is (``record id 7``, ``real:0:1``...)."""

    def skip(self, where: str, err: RecordError) -> None:
        if self.strict:
            raise TokenCompressError(f"{self.source}: {where}: {err} (drop --strict to skip such records)")
        self.counts[str(err)] += 1
        self.ids.setdefault(str(err), []).append(where)


def require(root: Path, rel: str, what: str) -> Path:
    path = root / rel
    if not path.exists():
        raise TokenCompressError(f"--data {root} is not a {what} layout: missing {rel}")
    return path


def read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TokenCompressError(
            f"{path}: not UTF-8 text (byte {exc.start}); an annotation is JSON"
        ) from None
    check_json_depth(text, path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise TokenCompressError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None


def field_of(record: dict[str, Any], name: str, kinds: type | tuple[type, ...] | None = None) -> Any:
    if not isinstance(record, dict) or name not in record or record[name] is None:
        raise RecordError(f"missing field '{name}'")
    value = record[name]
    if kinds is not None and (
        not isinstance(value, kinds) or (isinstance(value, bool) and bool not in _as_tuple(kinds))
    ):
        raise RecordError(f"field '{name}' has type {type(value).__name__}")
    if isinstance(value, (list, dict)) and depth(value) > RECORD_DEPTH:
        raise RecordError(f"field '{name}' is nested more than {RECORD_DEPTH} levels deep")
    return value


def _as_tuple(kinds: type | tuple[type, ...]) -> tuple[type, ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)


class Durations:
    """Probe each source video once; a referenced but absent video is a one-line error."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}

    def __call__(self, path: str, where: str) -> float:
        if path not in self._seen:
            from ..media.video import probe

            if not Path(path).is_file():
                raise VideoError(f"{where}: video not found: {path}")
            self._seen[path] = probe(path).duration_s
        return self._seen[path]


def keep(
    items: Iterable[Any], task_of: Callable[[Any], str], opts: LoadOptions, known: Iterable[str]
) -> list[Any]:
    """Apply ``--tasks`` (validated against ``known``) and then ``--limit`` on records."""
    items = list(items)
    if opts.tasks:
        known = set(known)
        bad = [t for t in opts.tasks if t not in known]
        if bad:
            raise TokenCompressError(f"--tasks {bad[0]}: unknown task; known: {', '.join(sorted(known))}")
        items = [it for it in items if task_of(it) in opts.tasks]
    if opts.limit is not None:
        if opts.limit < 1:
            raise TokenCompressError(f"--limit must be >= 1, got {opts.limit}")
        items = items[: opts.limit]
    return items


def ceil_end(t: float, duration: float) -> float:
    """OVO's cut end: ``min(ceil(t), duration)`` (quirk 4: up to 1 s of future is visible)."""
    return float(min(math.ceil(t), duration))
