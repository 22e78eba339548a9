"""Every row of docs/errors.md is reproduced here: the documented message and exit code are real.

A row is ``| `id` | trigger | `message` | exit |``; ``…`` in the message stands for a varying
part (a path, a number). Each id has one producer below that provokes the error and returns
``(exit code, message line)`` (``None`` as exit code for Python API errors); the table test
checks the fragments in order and the code, and a second test fails on undocumented producers
or rows without one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.conftest import build_tiny_llava_ov, random_frames
from tests.plugin_fakes import FakeEntryPoint, KeepFirst, patch_entry_points, plugin, strategy_named
from tests.videos import corrupt_mp4
from tokencompress import BlockStrategy, Pipeline, TokenCompressError, models
from tokencompress.cli import main
from tokencompress.errors import PluginFault

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


TINY_STC = (
    "stages:\n  pre_vit_block:\n    - {strategy: stc_cacher}\n"
    "  pre_prefill:\n    - {strategy: stc_pruner, tokens_per_frame: 8}\n"
)
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


# ------------------------------------------------------------ partial results
def _rows(out: str) -> list[str]:
    return [ln for ln in out.splitlines() if re.match(r"^\s*\d+\s+\d+\s+\d+\s", ln)]


@case("run-decode-fails-midway")
def _(c: Ctx):
    video = corrupt_mp4(c.tmp / "broken.mp4")
    report = c.tmp / "run.json"
    report.write_text('{"an": "older run"}')
    code, out, line = c.tiny_run("--video", str(video), "--fps", "1", "--json", str(report))
    saved = json.loads(report.read_text())
    assert saved["status"] == "failed" and "cannot decode video" in saved["error"]
    assert saved["stopped_at_frame"] == 49 and saved["summary"]["frames"] == 5 == len(saved["chunks"])
    assert len(_rows(out)) == 5 and "summary: 5 chunks, 5 frames" in out
    assert "stopped at frame 49: cannot decode video" in out
    return code, line


@case("run-interrupted")
def _(c: Ctx):
    from tokencompress.session import Stream

    real, calls = Stream.add_frames, []

    def add_frames(self, frames):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, frames)

    report = c.tmp / "run.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Stream, "add_frames", add_frames)
        code, out, line = c.tiny_run("--json", str(report), "--ask", "What?")
    saved = json.loads(report.read_text())
    assert saved["status"] == "interrupted" and len(saved["chunks"]) == 2 and "answer" not in saved
    assert len(_rows(out)) == 2 and "stopped at frame 100: interrupted (Ctrl-C)" in out
    return code, line


@case("run-json-directory")
def _(c: Ctx):
    code, out, line = c.cli_out("run", STC, "--json", str(c.tmp), "--no-progress")
    assert "model:" not in out  # refused before the model loads
    return code, line


@case("run-json-missing-folder")
def _(c: Ctx):
    return c.cli("run", STC, "--json", str(c.tmp / "nowhere" / "x.json"), "--no-progress")


@case("output-write-fails")
def _(c: Ctx):
    from tokencompress import outputs

    report = c.tmp / "run.json"
    report.write_text('{"an": "older run"}')

    def disk_full(tmp, data):
        tmp.write_bytes(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(outputs, "_write_synced", disk_full)
        code, _, line = c.tiny_run("--max-frames", "1", "--json", str(report))
    assert json.loads(report.read_text()) == {"an": "older run"}  # the earlier good file survives
    assert sorted(p.name for p in c.tmp.iterdir()) == ["run.json", "tiny.yaml"]  # no temporary file left
    return code, line


@case("bench-out-is-file")
def _(c: Ctx):
    out = c.tmp / "bench_out"
    out.write_text("")
    code, printed, line = c.cli_out("bench", STC, "--out", str(out), "--no-progress")
    assert "model:" not in printed
    return code, line


@case("bench-out-json-is-directory")
def _(c: Ctx):
    (c.tmp / "stc.json").mkdir()
    return c.cli("bench", STC, "--out", str(c.tmp), "--no-progress")


@case("bench-interrupted")
def _(c: Ctx):
    from tokencompress import bench

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bench, "run_benchmark", interrupted)
        result = c.cli("bench", STC, "--out", str(c.tmp), "--frames", "1", "--no-progress")
    saved = json.loads((c.tmp / "stc.json").read_text())
    assert saved["status"] == "interrupted" and saved["error"] == "interrupted (Ctrl-C)"
    return result


@case("bench-fails")
def _(c: Ctx):
    from tokencompress import bench

    def fails(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bench, "run_benchmark", fails)
        result = c.cli("bench", STC, "--out", str(c.tmp), "--frames", "1", "--no-progress")
    saved = json.loads((c.tmp / "stc.json").read_text())
    assert saved["status"] == "failed" and saved["error"] == "RuntimeError: CUDA out of memory (simulated)"
    return result


# --------------------------------------------------------------- plugin faults
class Boom(KeepFirst):
    name = "boom"

    def score(self, tokens, state, chunk):
        raise ValueError("kaboom")


class WrongType(KeepFirst):
    name = "wrong_type"

    def apply(self, tokens, state, chunk):
        return [tokens]


class WrongCount(KeepFirst):
    name = "wrong_count"
    changes_count = False

    def apply(self, tokens, state, chunk):
        return tokens.take(torch.arange(tokens.count // 2))


class NanScores(KeepFirst):
    name = "nan_scores"

    def score(self, tokens, state, chunk):
        return torch.full((tokens.count,), float("nan"))


class BlockBoom(BlockStrategy):
    name = "block_boom"

    def block_forward(self, call, hidden, run_next):
        if call.layer_index == 1:
            raise RuntimeError("out of memory (simulated)")
        return run_next(hidden)


class BlockShape(BlockStrategy):
    name = "block_shape"

    def block_forward(self, call, hidden, run_next):
        return run_next(hidden)[:, :-1]


FAULTY = plugin("pkg-faulty", [Boom, WrongType, WrongCount, NanScores, BlockBoom, BlockShape])


def _faulty_stream(c: Ctx, stage: str, name: str) -> tuple[None, str]:
    from tokencompress import Registry

    reg = Registry(plugins=[FAULTY])
    pipe = Pipeline.from_dict({"stages": {stage: [{"strategy": name}]}}, reg)
    model = c.tiny_model()
    with pipe.apply(model) as bound:
        s = bound.stream()
        with pytest.raises(PluginFault) as exc:
            s.add_frames(c.frames[:1])
    assert exc.value.__cause__ is not None or "returned" in str(exc.value)
    return None, str(exc.value)


@case("plugin-raises-in-run")
def _(c: Ctx):
    patch_entry_points(c.monkeypatch, FakeEntryPoint("faulty", "pkg-faulty", lambda: FAULTY))
    pipe = c.write("stages:\n  pre_prefill:\n    - {strategy: boom}\n", "boom.yaml")
    report = c.tmp / "run.json"
    code, out, line = c.cli_out(
        "run", pipe, "--model", str(c.checkpoint), "--json", str(report), "--no-progress"
    )
    assert json.loads(report.read_text())["status"] == "failed"
    code_debug = main(["run", pipe, "--model", str(c.checkpoint), "--no-progress", "--debug"])
    err = c.capsys.readouterr().err
    assert (
        code_debug == 1 and "Traceback" in err and "ValueError: kaboom" in err
    )  # the original, under --debug
    return code, line


@case("plugin-raises")
def _(c: Ctx):
    return _faulty_stream(c, "pre_prefill", "boom")


@case("plugin-wrong-type")
def _(c: Ctx):
    return _faulty_stream(c, "pre_prefill", "wrong_type")


@case("plugin-wrong-count")
def _(c: Ctx):
    return _faulty_stream(c, "pre_prefill", "wrong_count")


@case("plugin-nan-scores")
def _(c: Ctx):
    return _faulty_stream(c, "pre_prefill", "nan_scores")


@case("plugin-block-raises")
def _(c: Ctx):
    return _faulty_stream(c, "pre_vit_block", "block_boom")


@case("plugin-block-shape")
def _(c: Ctx):
    return _faulty_stream(c, "pre_vit_block", "block_shape")


@case("plugin-observer-raises")
def _(c: Ctx):
    from tokencompress import Registry

    calls: list[int] = []

    def tokencompress_stage_finished(event):
        calls.append(event.chunk_index)
        raise KeyError("metrics backend down")

    reg = Registry(plugins=[plugin("pkg-metrics", tokencompress_stage_finished=tokencompress_stage_finished)])
    pipe = Pipeline.from_dict(
        {"stages": {"pre_prefill": [{"strategy": "stc_pruner", "tokens_per_frame": 4}]}}, reg
    )
    with pipe.apply(c.tiny_model()) as bound, pytest.warns(RuntimeWarning) as caught:
        stats = bound.stream().add_frames(c.frames[:3])
    assert len(stats) == 3 and calls == [0]  # the stream went on; the observer ran once, then never again
    (warning,) = [w for w in caught if "observer" in str(w.message)]
    assert reg.observer_faults == [str(warning.message)]
    return None, str(warning.message)


@case("plugin-duplicate-name")
def _(c: Ctx):
    dup = [plugin(p, [strategy_named("dup")]) for p in ("pkg-alpha", "pkg-beta")]
    patch_entry_points(
        c.monkeypatch,
        *(
            FakeEntryPoint(p.__tokencompress_package__, p.__tokencompress_package__, lambda p=p: p)
            for p in dup
        ),
    )
    assert main(["plugins"]) == 0  # the listing works and shows the conflict
    listing = json.loads(c.capsys.readouterr().out)
    assert [row["name"] for row in listing["conflicts"]] == ["dup"]
    assert c.validate(STEP.replace("stc_pruner, %s", "stc_pruner"))[0] == 0  # other pipelines still run
    return c.validate("stages:\n  pre_prefill:\n    - {strategy: dup}\n")


@case("plugin-exits-at-import")
def _(c: Ctx):
    def exits() -> Any:
        raise SystemExit(3)

    patch_entry_points(c.monkeypatch, FakeEntryPoint("quitter", "pkg-quitter", exits))
    assert main(["plugins"]) == 0
    out, err = c.capsys.readouterr()
    assert json.loads(out)["failed"][0]["error"] == "import failed: SystemExit: 3"
    assert err.splitlines() == [
        "warning: tokencompress plugin pkg-quitter:quitter was skipped: import failed: SystemExit: 3"
    ]
    return c.validate("stages:\n  pre_prefill:\n    - {strategy: quitter_pruner}\n")


# ------------------------------------------------------------------- frames
def _add_frames(c: Ctx, bad: Any) -> tuple[None, str]:
    with _pipeline_api({}).apply(c.tiny_model()) as bound:
        s = bound.stream()
        result = c.api(lambda: s.add_frames(bad))
        assert s._pending == [] and s.chunks_done == 0  # refused before it was queued
        assert len(s.add_frames(c.frames[:1])) == 1  # and the stream still works
    return result


@case("frame-zero-height")
def _(c: Ctx):
    return _add_frames(c, np.zeros((1, 0, 40, 3), np.uint8))


@case("frame-float-0-1")
def _(c: Ctx):
    return _add_frames(c, c.frames[:1] / 255.0)


@case("frame-float-0-255")
def _(c: Ctx):
    return _add_frames(c, c.frames[:1].astype(np.float32))


@case("frame-channels")
def _(c: Ctx):
    return _add_frames(c, [c.frames[0], c.frames[1][..., :2]])


# ------------------------------------------------------------------ the table
TINY: list[Any] = []  # the tiny model, built on first use and shared by this module's cases


@pytest.fixture(scope="module")
def builtin_model() -> models.LoadedModel:
    return models.build_default_model()


@pytest.fixture
def ctx(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    builtin_model: Any,
    tiny_checkpoint: Path,
) -> Ctx:
    monkeypatch.setattr(models, "build_default_model", lambda *a, **k: builtin_model)
    return Ctx(tmp_path, capsys, random_frames(4), tiny_checkpoint, monkeypatch, TINY)


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
