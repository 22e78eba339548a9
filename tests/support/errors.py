"""The harness behind docs/errors.md: the table's rows, and the registry of cases that provoke them.

A row is ``| `id` | trigger | `message` | exit |``; ``…`` in the message stands for a varying
part (a path, a number). Each id has one producer (``@case(id)``, in ``tests/support/error_cases_*.py``)
that provokes the error and returns ``(exit code, message line)`` (``None`` as exit code for
Python API errors); ``tests/cli/test_error_table.py`` checks every row against its producer.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.models import build_tiny_llava_ov
from tests.support.paths import DOCS
from tests.support.pipelines import TINY_STC
from tokencompress import Pipeline, TokenCompressError
from tokencompress.cli.main import main

DOC = DOCS / "errors.md"
ROW = re.compile(r"^\|\s*`([a-z0-9-]+)`\s*\|(.*)\|\s*`(.+)`\s*\|\s*(\d+|API)\s*\|\s*$")


@dataclass(frozen=True)
class Row:
    id: str
    message: str
    exit: int | None


def table() -> list[Row]:
    rows = []
    for line in DOC.read_text().splitlines():
        m = ROW.match(line)
        if m:
            rows.append(Row(m[1], m[3], None if m[4] == "API" else int(m[4])))
    return rows


@dataclass
class Ctx:
    tmp: Path
    capsys: pytest.CaptureFixture[str]
    frames: np.ndarray
    checkpoint: Path
    monkeypatch: pytest.MonkeyPatch
    _tiny: list[Any]

    def tiny_model(self) -> Any:
        if not self._tiny:
            self._tiny.append(build_tiny_llava_ov())
        return self._tiny[0]

    def tiny_run(self, *extra: str) -> tuple[int, str, str]:
        """``run`` on the tiny checkpoint (16 tokens a frame) with an STC pipeline that fits it."""
        pipe = self.write(TINY_STC, "tiny.yaml")
        return self.cli_out("run", pipe, "--model", str(self.checkpoint), "--no-progress", *extra)

    def write(self, text: str, name: str = "p.yaml") -> str:
        path = self.tmp / name
        path.write_text(text)
        return str(path)

    def cli(self, *argv: str) -> tuple[int, str]:
        code, _, line = self.cli_out(*argv)
        return code, line

    def cli_out(self, *argv: str) -> tuple[int, str, str]:
        """Exit code, stdout and the one ``error:``/``interrupted:`` line on stderr."""
        code = main(list(argv))
        out, err = self.capsys.readouterr()
        assert "Traceback" not in err, err
        lines = [ln for ln in err.splitlines() if ln.startswith(("error: ", "interrupted: "))]
        assert len(lines) == (code != 0), err
        return code, out, lines[0].removeprefix("error: ") if lines else ""

    def validate(self, text: str) -> tuple[int, str]:
        return self.cli("validate", self.write(text), "--no-model")

    def api(self, fn: Callable[[], Any]) -> tuple[None, str]:
        with pytest.raises(TokenCompressError) as exc:
            fn()
        assert "\n" not in str(exc.value)
        return None, str(exc.value)


CASES: dict[str, Callable[[Ctx], tuple[int | None, str]]] = {}


def case(name: str) -> Callable[[Callable[[Ctx], tuple[int | None, str]]], Any]:
    def register(fn: Callable[[Ctx], tuple[int | None, str]]) -> Any:
        assert name not in CASES, name
        CASES[name] = fn
        return fn

    return register


STEP = "stages:\n  pre_prefill:\n    - {strategy: stc_pruner, %s}\n"


def pipeline_api(stages: dict) -> Pipeline:
    return Pipeline.from_dict({"stages": stages})


TINY: list[Any] = []  # the tiny model, built on first use and shared by every case
