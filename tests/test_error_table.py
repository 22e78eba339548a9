"""Every row of docs/errors.md is reproduced here: the documented message and exit code are real.

A row is ``| `id` | trigger | `message` | exit |``; ``…`` in the message stands for a varying
part (a path, a number). Each id has one producer below that provokes the error and returns
``(exit code, message line)`` (``None`` as exit code for Python API errors); the table test
checks the fragments in order and the code, and a second test fails on undocumented producers
or rows without one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import random_frames
from tokencompress import Pipeline, TokenCompressError, models
from tokencompress.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "errors.md"
ROW = re.compile(r"^\|\s*`([a-z0-9-]+)`\s*\|(.*)\|\s*`(.+)`\s*\|\s*(\d+|API)\s*\|\s*$")
STC = str(ROOT / "pipelines" / "stc.yaml")


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

    def write(self, text: str, name: str = "p.yaml") -> str:
        path = self.tmp / name
        path.write_text(text)
        return str(path)

    def cli(self, *argv: str) -> tuple[int, str]:
        code = main(list(argv))
        err = self.capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
        assert "Traceback" not in err, err
        return code, lines[-1].removeprefix("error: ") if lines else err

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


# --------------------------------------------------------------- pipeline files
@case("yaml-bool-for-int")
def _(c: Ctx):
    return c.validate(STEP % "tokens_per_frame: true")


@case("yaml-string-for-int")
def _(c: Ctx):
    return c.validate(STEP % "tokens_per_frame: '60'")


@case("yaml-union-path")
def _(c: Ctx):
    return c.validate("stages:\n  pre_vit_block:\n    - {strategy: tome, r: true}\n")


@case("yaml-duplicate-key")
def _(c: Ctx):
    return c.validate("name: a\nstream: {fps: 1}\nstream: {fps: 2}\n")


@case("yaml-duplicate-param")
def _(c: Ctx):
    return c.validate(STEP % "tokens_per_frame: 3, tokens_per_frame: 4")


@case("yaml-too-many-steps")
def _(c: Ctx):
    return c.validate("stages:\n  pre_prefill:\n" + "    - {strategy: stc_pruner}\n" * 65)


@case("yaml-alias-bomb")
def _(c: Ctx):
    lines = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for i in range(1, 6):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return c.validate("\n".join(lines) + "\n")


@case("yaml-file-too-large")
def _(c: Ctx):
    return c.validate("# padding\n" * 120_000)


@case("yaml-fps-inf")
def _(c: Ctx):
    return c.validate("stream: {fps: .inf}\n")


@case("yaml-fps-nan")
def _(c: Ctx):
    return c.validate("stream: {fps: .nan}\n")


@case("yaml-frames-per-chunk-bool")
def _(c: Ctx):
    return c.validate("stream: {frames_per_chunk: true}\n")


@case("pipeline-is-directory")
def _(c: Ctx):
    return c.cli("validate", str(c.tmp), "--no-model")


@case("pipeline-not-text")
def _(c: Ctx):
    path = c.tmp / "p.yaml"
    path.write_bytes(b"\xff\xfe\x00binary")
    return c.cli("validate", str(path), "--no-model")


# ---------------------------------------------------------------- CLI numbers
def _run(c: Ctx, *extra: str) -> tuple[int, str]:
    return c.cli("run", STC, "--no-progress", *extra)


@case("cli-fps-nan")
def _(c: Ctx):
    return _run(c, "--fps", "nan")


@case("cli-fps-inf")
def _(c: Ctx):
    return _run(c, "--fps", "inf")


@case("cli-fps-zero")
def _(c: Ctx):
    return _run(c, "--fps", "0")


@case("cli-max-new-tokens")
def _(c: Ctx):
    return _run(c, "--max-new-tokens", "-1")


@case("cli-max-frames")
def _(c: Ctx):
    return _run(c, "--max-frames", "0")


@case("cli-ask-empty")
def _(c: Ctx):
    return _run(c, "--ask", " ")


@case("cli-json-empty")
def _(c: Ctx):
    return _run(c, "--json", "")


@case("bench-frames")
def _(c: Ctx):
    return c.cli("bench", STC, "--frames", "0", "--no-progress")


@case("bench-repeats")
def _(c: Ctx):
    return c.cli("bench", STC, "--repeats", "0", "--no-progress")


# ------------------------------------------------------------------- videos
@case("video-directory")
def _(c: Ctx):
    return _run(c, "--video", str(c.tmp))


@case("video-image")
def _(c: Ctx):
    from PIL import Image

    path = c.tmp / "still.png"
    Image.fromarray(random_frames(1)[0]).save(path)
    return _run(c, "--video", str(path))


@case("video-text")
def _(c: Ctx):
    return _run(c, "--video", c.write("not a video\n" * 50, "notes.txt"))


# ------------------------------------------------------------------ the table
@pytest.fixture(scope="module")
def builtin_model() -> models.LoadedModel:
    return models.build_default_model()


@pytest.fixture
def ctx(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, builtin_model: Any
) -> Ctx:
    monkeypatch.setattr(models, "build_default_model", lambda *a, **k: builtin_model)
    return Ctx(tmp_path, capsys, random_frames(4))


def test_every_case_has_a_row_and_every_row_a_case() -> None:
    ids = [r.id for r in table()]
    assert len(ids) == len(set(ids)), "duplicate ids in docs/errors.md"
    assert set(ids) == set(CASES), (sorted(set(CASES) - set(ids)), sorted(set(ids) - set(CASES)))


@pytest.mark.parametrize("row", table(), ids=lambda r: r.id)
def test_documented_error(row: Row, ctx: Ctx) -> None:
    code, message = CASES[row.id](ctx)
    assert code == row.exit, (code, message)
    assert "\n" not in message.strip(), message
    at = 0
    for part in row.message.split("…"):
        found = message.find(part, at)
        assert found >= 0, f"{part!r} not in {message!r} (after position {at})"
        at = found + len(part)


def _pipeline_api(stages: dict) -> Pipeline:
    return Pipeline.from_dict({"stages": stages})
