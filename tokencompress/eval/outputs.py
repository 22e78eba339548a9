"""Files an eval writes: per-rank prediction logs (append-only, resumable) and atomic results.

A log line is written and flushed as soon as a query is answered, so a killed run loses at most
the line being written; reading skips a torn last line. Everything else is written to a temp
file in the same folder and renamed over the target, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import TokenCompressError
from ..outputs import write_bytes

__all__ = ["PredictionLog", "atomic_write", "read_logs", "write_results"]


def atomic_write(path: Path, data: str | bytes, flag: str = "--out") -> Path:
    """``data`` into ``path`` through :func:`tokencompress.outputs.write_bytes` (temp file, rename)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TokenCompressError(f"{flag} {path.parent}: cannot write: {exc.strerror or exc}") from None
    return write_bytes(path, data.encode() if isinstance(data, str) else data, flag)


def write_results(out: Path, files: dict[str, str | bytes]) -> None:
    """Each of ``files`` (name -> content) into ``out``, atomically. A failure (a full disk) names
    the file and says the answers are kept in the per-rank logs, so a rerun only writes results."""
    for name, data in files.items():
        try:
            atomic_write(out / name, data)
        except TokenCompressError as exc:
            raise TokenCompressError(
                f"{exc}; every answer is kept in {out / 'preds.rank*.jsonl'}: free space and rerun the "
                "same command to write the results without answering again"
            ) from None


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
        try:
            for rec in records:
                self._fh.write(json.dumps(rec, sort_keys=True) + "\n")
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:
            raise TokenCompressError(
                f"--out {self.path}: cannot write: {exc.strerror or exc}; the answers logged before are kept: "
                "free space and rerun the same command to go on from there"
            ) from None

    def close(self) -> None:
        try:
            self._fh.close()
        except OSError:
            pass  # the write that failed was reported; the lines before it are on disk
