"""Files an eval writes: per-rank prediction logs (append-only, resumable) and atomic results.

A log line is written and flushed as soon as a query is answered, so a killed run loses at most
the line being written; reading skips a torn last line. Everything else is written to a temp
file in the same folder and renamed over the target, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..api.errors import TokenCompressError

__all__ = ["PredictionLog", "atomic_write", "read_logs"]


def atomic_write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _lines(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a kill: that query is simply redone


def read_logs(out: Path, run_key: str) -> tuple[dict[tuple[str, str], dict[str, Any]], int]:
    """Finished predictions of this run (any rank's log), keyed by (qid, pipeline key); and how
    many lines belonged to a different run setting (ignored, not overwritten)."""
    done: dict[tuple[str, str], dict[str, Any]] = {}
    stale = 0
    for path in sorted(out.glob("preds.rank*.jsonl")):
        for rec in _lines(path):
            if rec.get("run_key") != run_key:
                stale += 1
                continue
            done[(rec["qid"], rec["pipeline_key"])] = rec
    return done, stale


class PredictionLog:
    def __init__(self, out: Path, rank: int) -> None:
        self.path = out / f"preds.rank{rank}.jsonl"
        try:
            out.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")
        except OSError as exc:
            raise TokenCompressError(f"--out {out}: cannot write: {exc.strerror or exc}") from None

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        for rec in records:
            self._fh.write(json.dumps(rec, sort_keys=True) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()
