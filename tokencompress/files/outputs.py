"""Result files and run status shared by ``run`` and ``bench``: checked first, written atomically.

A long run must not end in a traceback because ``--out`` was a file or ``--json`` pointed into
a missing folder, so paths are checked before any model is loaded. Every file is written to a
temporary name in the same folder and renamed over the target, so a full disk, a size limit
or an interrupt leaves the previous good file untouched, never a truncated one. A run that
stops early is still a result: :class:`RunStatus` says how it ended and maps to the exit code.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..api.errors import TokenCompressError

__all__ = [
    "RunStatus",
    "check_output_file",
    "check_output_dir",
    "atomic_path",
    "write_json",
    "EXIT_CODES",
]

EXIT_CODES = {"complete": 0, "failed": 1, "interrupted": 130}
"""Exit status per run status; bad input refused up front exits 2 (see docs/errors.md)."""


@dataclass(frozen=True)
class RunStatus:
    """How a run ended: ``complete``, ``failed`` (an error part-way) or ``interrupted`` (Ctrl-C)."""

    status: Literal["complete", "failed", "interrupted"] = "complete"
    error: str | None = None
    stopped_at_frame: int | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    def line(self) -> str | None:
        """``stopped at frame N: reason`` for an incomplete run, None for a complete one."""
        if self.status == "complete":
            return None
        reason = self.error or "interrupted"
        return f"stopped at frame {self.stopped_at_frame}: {reason}"

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "error": self.error, "stopped_at_frame": self.stopped_at_frame}


def _writable_dir(folder: Path, flag: str, path: Path) -> None:
    if not folder.exists():
        raise TokenCompressError(f"{flag} {path}: cannot write: folder {folder} does not exist")
    if not folder.is_dir():
        raise TokenCompressError(f"{flag} {path}: cannot write: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise TokenCompressError(f"{flag} {path}: cannot write: folder {folder} is not writable")


def check_output_file(path: str | os.PathLike[str], flag: str) -> Path:
    """``path`` can be (over)written as a file: not a folder, in an existing writable folder."""
    p = Path(path)
    if p.is_dir():
        raise TokenCompressError(f"{flag} {p}: is a directory; give a file name such as {p / 'result.json'}")
    if p.exists() and not os.access(p, os.W_OK):
        raise TokenCompressError(f"{flag} {p}: cannot write: the file is read-only")
    _writable_dir(p.parent if str(p.parent) else Path("."), flag, p)
    return p


def check_output_dir(path: str | os.PathLike[str], flag: str, names: list[str]) -> Path:
    """``path`` is (or can become) a writable folder in which every one of ``names`` can be written."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise TokenCompressError(f"{flag} {p}: is a file, not a folder; give a folder for the results")
    if not p.exists():
        parent = p.parent if str(p.parent) else Path(".")
        nearest = next((q for q in [parent, *parent.parents] if q.exists()), Path("."))
        _writable_dir(nearest, flag, p)
    else:
        _writable_dir(p, flag, p)
    for name in names:
        if (p / name).exists():
            check_output_file(p / name, flag)
    return p


@contextmanager
def atomic_path(path: str | os.PathLike[str], flag: str = "output") -> Iterator[Path]:
    """A temporary path next to ``path``; renamed over it only if the ``with`` body succeeds and
    wrote something (a body that leaves it empty, e.g. a plot skipped, leaves ``path`` alone).
    The temporary name keeps ``path``'s suffix, so writers that pick a format by suffix work."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{p.stem}.", suffix=f".tmp{p.suffix}", dir=p.parent if str(p.parent) else "."
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.stat().st_size > 0:
            os.replace(tmp_path, p)
    except OSError as exc:
        raise TokenCompressError(f"{flag} {p}: cannot write: {exc.strerror or exc}") from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | os.PathLike[str], payload: Any, flag: str = "output") -> Path:
    """Write ``payload`` as indented JSON atomically (NaN/inf as null, so the file is valid JSON)."""
    text = json.dumps(_finite(payload), indent=2, allow_nan=False, default=_plain)
    return write_text(path, text, flag)


def write_text(path: str | os.PathLike[str], text: str, flag: str = "output") -> Path:
    return write_with(path, lambda tmp: _write_synced(tmp, text.encode()), flag)


def write_with(path: str | os.PathLike[str], writer: Callable[[Path], Any], flag: str = "output") -> Path:
    """Let ``writer`` fill a temporary file, then rename it over ``path``."""
    with atomic_path(path, flag) as tmp:
        writer(tmp)
    return Path(path)


def _write_synced(tmp: Path, data: bytes) -> None:
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _finite(value: Any) -> Any:
    """NaN and infinities as null: strict JSON readers refuse them."""
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    item = getattr(value, "item", None)
    if callable(item):
        return item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
