"""Files an eval writes: per-rank prediction logs (append-only, resumable) and atomic results.

A log line is written and flushed as soon as a query is answered, so a killed run loses at most
the line being written; reading skips (and names) a torn or corrupt line, and the next append
starts a fresh line. Everything else is written to a temp
file in the same folder and renamed over the target, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..api.errors import TokenCompressError
from ..files.outputs import write_bytes

__all__ = ["PredictionLog", "atomic_write", "read_logs", "write_results"]


def atomic_write(path: Path, data: str | bytes, flag: str = "--out") -> Path:
    """``data`` into ``path`` through :func:`tokencompress.files.outputs.write_bytes` (temp file, rename)."""
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


def _lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value or ``None``) for every non-blank line: a line torn by a kill, not
    UTF-8 or not JSON gives ``None``."""
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                yield n, json.loads(raw.decode("utf-8"))
            except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError included
                yield n, None


def _usable(rec: dict[str, Any]) -> bool:
    """Holds what resuming and scoring read: ids, frame count and timings of the right types."""
    if not all(isinstance(rec.get(k), str) for k in ("qid", "pipeline_key")):
        return False
    frames, timings, dialog = rec.get("frames"), rec.get("timings"), rec.get("dialog", [])
    return (
        isinstance(frames, dict)
        and isinstance(frames.get("count"), int)
        and isinstance(timings, dict)
        and all(_number(v) for v in timings.values())
        and (rec.get("visual_tokens") is None or _number(rec["visual_tokens"]))
        and isinstance(dialog, list)
        and all(isinstance(turn, dict) for turn in dialog)
    )


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_logs(out: Path, run_key: str) -> tuple[dict[tuple[str, str], dict[str, Any]], int, list[str]]:
    """Finished predictions of this run (any rank's log), keyed by (qid, pipeline key); how many
    lines belonged to a different run setting (ignored, not overwritten); and one warning per log
    holding unusable lines (not UTF-8, not a JSON object, a key missing): they are skipped and
    named by line number, and their queries are answered again."""
    done: dict[tuple[str, str], dict[str, Any]] = {}
    stale = 0
    warnings = []
    for path in sorted(out.glob("preds.rank*.jsonl")):
        bad: list[int] = []
        for n, rec in _lines(path):
            if not isinstance(rec, dict) or not isinstance(rec.get("run_key"), str):
                bad.append(n)
            elif rec["run_key"] != run_key:
                stale += 1
            elif not _usable(rec):
                bad.append(n)
            else:
                done[(rec["qid"], rec["pipeline_key"])] = rec
        if bad:
            shown = ", ".join(map(str, bad[:10])) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
            warnings.append(
                f"{path}: skipped {len(bad)} unreadable line(s) ({shown}); "
                f"queries with no other answer in the logs are answered again"
            )
    return done, stale, warnings


class PredictionLog:
    """This rank's log, appended to; a torn last line (a kill mid-write) is ended first, so the
    next record starts on a line of its own and is read back on resume."""

    def __init__(self, out: Path, rank: int) -> None:
        self.path = out / f"preds.rank{rank}.jsonl"
        try:
            out.mkdir(parents=True, exist_ok=True)
            torn = _ends_torn(self.path)
            self._fh = open(self.path, "a", encoding="utf-8")
            if torn:
                self._fh.write("\n")
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


def _ends_torn(path: Path) -> bool:
    """``path`` exists, is not empty and its last byte is not a newline."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) != b"\n"
