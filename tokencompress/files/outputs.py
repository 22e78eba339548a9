"""Result files and run status shared by ``run``, ``bench`` and ``eval``: checked first, written atomically.

A long run must not end in a traceback because ``--out`` was a file or ``--json`` pointed into
a missing folder, so paths are checked before any model is loaded. Every file is written to a
temporary name in the same folder and renamed over the target, so a full disk, a size limit
or an interrupt leaves the previous good file untouched, never a truncated one. A run that
stops early is still a result: :class:`RunStatus` says how it ended and maps to the exit code.

What a path names is respected, never replaced:

* a symbolic link is followed: the file it points to is written atomically (temporary file in
  that file's folder, renamed over it) and the link stays as it was;
* an open descriptor of this process (``/dev/stdout``, ``/dev/stderr``, ``/dev/fd/N``,
  ``/proc/self/fd/N``) is written to directly, so ``--json /dev/stdout`` prints the JSON;
* a character device or a FIFO (``/dev/null``, a named pipe) is opened and written, no rename;
* a folder, a block device or a socket is refused with one line.

A new file's mode follows the umask, as with ``open()`` (``0666 & ~umask``); a replaced file
keeps its mode (and, when running as root, its owner). A name longer than the file system
allows is one line naming the flag.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import stat
import sys
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
    "atomic_dir",
    "write_json",
    "write_text",
    "write_bytes",
    "write_with",
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
    """``path`` can be (over)written as a file: not a folder, in an existing writable folder
    (a link's target, a device or a pipe is checked where it is written, see the module doc)."""
    p = Path(path)
    t = _target(p, flag)
    if (t.exists or t.fd is not None) and not os.access(t.path, os.W_OK):
        raise TokenCompressError(f"{flag} {p}: cannot write: the file is read-only")
    if t.fd is None and not t.special:
        linked = t.path != Path(os.path.abspath(p))
        _writable_dir(t.path.parent if linked else (p.parent if str(p.parent) else Path(".")), flag, p)
    return p


def check_output_dir(path: str | os.PathLike[str], flag: str, names: list[str]) -> Path:
    """``path`` is (or can become) a writable folder in which every one of ``names`` can be written."""
    p = Path(path)
    try:
        os.lstat(p)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            raise _os_error(flag, p, exc) from None
    if p.exists() and not p.is_dir():
        raise TokenCompressError(f"{flag} {p}: is a file, not a folder; give a folder for the results")
    if p.is_symlink() and not p.exists():
        raise TokenCompressError(
            f"{flag} {p}: is a link to {os.readlink(p)}, which does not exist; give a folder"
        )
    if not p.exists():
        parent = p.parent if str(p.parent) else Path(".")
        nearest = next((q for q in [parent, *parent.parents] if q.exists()), Path("."))
        _writable_dir(nearest, flag, p)
    else:
        _writable_dir(p, flag, p)
    for name in names:
        if os.path.lexists(p / name):
            check_output_file(p / name, flag)
    return p


@contextmanager
def atomic_path(path: str | os.PathLike[str], flag: str = "output") -> Iterator[Path]:
    """A temporary path to fill; its content goes to ``path`` only if the ``with`` body succeeds
    and wrote something (a body that leaves it empty, e.g. a plot skipped, leaves ``path`` alone).
    A file is replaced by renaming the temporary file over it; a descriptor, a device or a pipe
    gets the bytes written to it (see the module doc). The temporary name keeps ``path``'s
    suffix, so writers that pick a format by suffix work."""
    p = Path(path)
    t = _target(p, flag)
    tmp: Path | None = None
    try:
        through = t.fd is not None or t.special  # filled in the temp folder, then written through
        tmp = _temp_file(Path(tempfile.gettempdir(), f"out{p.suffix}") if through else t.path, t)
        yield tmp
        if tmp.stat().st_size > 0:
            if through:
                _send(t, tmp.read_bytes())
            else:
                os.replace(tmp, t.path)
    except OSError as exc:
        raise _os_error(flag, p, exc) from None
    finally:
        if tmp is not None and os.path.lexists(tmp):
            tmp.unlink()


def write_json(path: str | os.PathLike[str], payload: Any, flag: str = "output") -> Path:
    """Write ``payload`` as indented JSON atomically (NaN/inf as null, so the file is valid JSON)."""
    text = json.dumps(_finite(payload), indent=2, allow_nan=False, default=_plain) + "\n"
    return write_text(path, text, flag)


def write_text(path: str | os.PathLike[str], text: str, flag: str = "output") -> Path:
    return write_bytes(path, text.encode(), flag)


def write_bytes(path: str | os.PathLike[str], data: bytes, flag: str = "output") -> Path:
    return write_with(path, lambda tmp: _write_synced(tmp, data), flag)


def write_with(path: str | os.PathLike[str], writer: Callable[[Path], Any], flag: str = "output") -> Path:
    """Let ``writer`` fill a temporary file, then move its content to ``path`` (see :func:`atomic_path`)."""
    with atomic_path(path, flag) as tmp:
        writer(tmp)
    return Path(path)


def atomic_dir(entry: Path, fill: Callable[[Path], Any], replace: bool) -> None:
    """Let ``fill`` populate a fresh sibling folder (mode per the umask), then rename it to
    ``entry``. An existing ``entry`` is moved aside first when ``replace`` (else left: a racing
    writer's equivalent copy), so a reader sees the old folder or the new one, never half of one.
    Raises ``OSError``."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = _fresh(entry, lambda name: os.mkdir(name, 0o777))
    try:
        fill(tmp)
        try:
            os.replace(tmp, entry)
        except OSError:
            if not replace:
                return
            stale = _fresh(entry, lambda name: None, ".stale")
            os.replace(entry, stale)
            os.replace(tmp, entry)
            shutil.rmtree(stale, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass(frozen=True)
class _Target:
    path: Path  # what is written: a link resolved to the file it points to
    exists: bool = False
    fd: int | None = None  # an open descriptor of this process (/dev/stdout, /dev/fd/N)
    special: bool = False  # a character device or a FIFO: written through, never renamed over
    mode: int | None = None  # an existing file's permissions and owner, kept when it is replaced
    owner: tuple[int, int] | None = None


_DESCRIPTOR = re.compile(r"/proc/(\d+)(?:/task/\d+)?/fd/(\d+)")
_KINDS = ((stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _target(path: Path, flag: str) -> _Target:
    """What writing ``path`` means: links followed one hop at a time (so a link to
    ``/proc/self/fd/N`` is seen as that descriptor), then the file type decides."""
    try:
        p = os.path.abspath(path)
        for _ in range(40):
            head, name = os.path.split(p)
            p = os.path.join(os.path.realpath(head), name)
            m = _DESCRIPTOR.fullmatch(p)
            if m and int(m[1]) == os.getpid():
                return _Target(Path(p), fd=int(m[2]))
            if not os.path.islink(p):
                break
            p = os.path.join(os.path.dirname(p), os.readlink(p))
        else:
            raise OSError(errno.ELOOP, "too many levels of symbolic links")
        try:
            st = os.stat(p)
        except FileNotFoundError:
            return _Target(Path(p))
    except OSError as exc:
        raise _os_error(flag, path, exc) from None
    if stat.S_ISDIR(st.st_mode):
        raise TokenCompressError(
            f"{flag} {path}: is a directory; give a file name such as {path / 'result.json'}"
        )
    if stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode):
        return _Target(Path(p), exists=True, special=True)
    for test, kind in _KINDS:
        if test(st.st_mode):
            raise TokenCompressError(
                f"{flag} {path}: is {kind}, not a file; give a file name such as result.json"
            )
    return _Target(Path(p), True, mode=stat.S_IMODE(st.st_mode) & 0o777, owner=(st.st_uid, st.st_gid))


def _os_error(flag: str, path: Path, exc: OSError) -> TokenCompressError:
    if exc.errno == errno.ENAMETOOLONG:
        longest = max(len(os.fsencode(part)) for part in Path(path).parts)
        return TokenCompressError(
            f"{flag} {path}: the name is too long for the file system ({longest} bytes; a file name "
            "has at most 255 bytes, a path 4096); give a shorter name"
        )
    return TokenCompressError(f"{flag} {path}: cannot write: {exc.strerror or exc}")


def _fresh(near: Path, make: Callable[[str], Any], tag: str = ".tmp") -> Path:
    """A new name beside ``near`` (at most ~120 bytes whatever ``near``'s length) made by ``make``."""
    for _ in range(100):
        name = near.with_name(f".{near.stem[:40]}.{secrets.token_hex(4)}{tag}{near.suffix[:16]}")
        try:
            make(str(name))
        except FileExistsError:
            continue
        return name
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(near.parent))


def _temp_file(near: Path, t: _Target) -> Path:
    """An empty file beside ``near``, created like ``open()`` would (``0666 & ~umask``), or with
    the mode and owner of the file it will replace."""
    tmp = _fresh(near, lambda name: os.close(os.open(name, _CREATE, 0o666)))
    if t.mode is not None:
        os.chmod(tmp, t.mode)
    if t.owner is not None and os.geteuid() == 0 and t.owner != (os.geteuid(), os.getegid()):
        os.chown(tmp, *t.owner)
    return tmp


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def _send(t: _Target, data: bytes) -> None:
    """Write through to a descriptor, a device or a pipe (what ``open(path, 'w')`` would reach)."""
    if t.fd is not None:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()  # what was printed comes first
        _write_all(t.fd, data)
        return
    fd = os.open(t.path, os.O_WRONLY | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


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
