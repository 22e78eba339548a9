"""Cases of docs/errors.md: output paths that are not plain files, and writes that fail."""

from __future__ import annotations

import errno
import os
import socket

import pytest

from tests.support.errors import Ctx, case
from tests.support.paths import STC_YAML
from tokencompress.eval.outputs import PredictionLog


@case("output-name-too-long")
def _(c: Ctx):
    return c.cli("run", STC_YAML, "--json", str(c.tmp / ("r" * 300 + ".json")), "--no-progress")


@case("output-socket")
def _(c: Ctx):
    path = c.tmp / "s"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        return c.cli("run", STC_YAML, "--json", str(path), "--no-progress")


@case("output-link-loop")
def _(c: Ctx):
    loop = c.tmp / "loop.json"
    loop.symlink_to(loop)
    result = c.cli("run", STC_YAML, "--json", str(loop), "--no-progress")
    assert loop.is_symlink()
    return result


@case("bench-out-dangling-link")
def _(c: Ctx):
    (c.tmp / "out").symlink_to(c.tmp / "gone")
    return c.cli("bench", STC_YAML, "--out", str(c.tmp / "out"), "--no-progress")


@case("eval-results-write-fails")
def _(c: Ctx):
    from tokencompress.eval.synthetic import build

    data = build("videomme", c.tmp / "data")["root"]
    out = c.tmp / "out"
    real = os.fsync

    def full_at_md(fd: int) -> None:
        name = os.readlink(f"/proc/self/fd/{fd}").split("/")[-1]
        if name.startswith(".results.") and ".md" in name:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "fsync", full_at_md)
        result = c.cli(
            "eval", STC_YAML, "--benchmark", "videomme", "--data", str(data), "--fps", "0.25", "--limit", "1",
            "--max-new-tokens", "2", "--out", str(out), "--no-progress",
        )  # fmt: skip
    assert (out / "preds.rank0.jsonl").stat().st_size > 0 and not (out / "results.md").exists()
    return result


@case("eval-log-write-fails")
def _(c: Ctx):
    class Full:
        def write(self, text: str) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

    log = PredictionLog(c.tmp, 0)
    log._fh.close()
    log._fh = Full()  # type: ignore[assignment]
    return c.api(lambda: log.write([{"qid": "q0"}]))
