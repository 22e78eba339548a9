"""Cases of docs/errors.md: runs that stop part-way, output files, plugin faults."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import torch

from tests.support.errors import STEP, Ctx, case
from tests.support.paths import STC_YAML
from tests.support.plugin_fakes import FakeEntryPoint, KeepFirst, patch_entry_points, plugin, strategy_named
from tests.support.videos import corrupt_mp4
from tokencompress import BlockStrategy, Pipeline
from tokencompress.api.errors import PluginFault
from tokencompress.cli.main import main


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
    from tokencompress.stream.stream import Stream

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
    code, out, line = c.cli_out("run", STC_YAML, "--json", str(c.tmp), "--no-progress")
    assert "model:" not in out  # refused before the model loads
    return code, line


@case("run-json-missing-folder")
def _(c: Ctx):
    return c.cli("run", STC_YAML, "--json", str(c.tmp / "nowhere" / "x.json"), "--no-progress")


@case("output-write-fails")
def _(c: Ctx):
    from tokencompress.files import outputs

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
    code, printed, line = c.cli_out("bench", STC_YAML, "--out", str(out), "--no-progress")
    assert "model:" not in printed
    return code, line


@case("bench-out-json-is-directory")
def _(c: Ctx):
    (c.tmp / "stc.json").mkdir()
    return c.cli("bench", STC_YAML, "--out", str(c.tmp), "--no-progress")


@case("bench-interrupted")
def _(c: Ctx):
    from tokencompress import bench

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bench, "run_benchmark", interrupted)
        result = c.cli("bench", STC_YAML, "--out", str(c.tmp), "--max-frames", "1", "--no-progress")
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
        result = c.cli("bench", STC_YAML, "--out", str(c.tmp), "--max-frames", "1", "--no-progress")
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
    assert main(["plugins", "--json"]) == 0  # the listing works and shows the conflict
    listing = json.loads(c.capsys.readouterr().out)
    assert [row["name"] for row in listing["conflicts"]] == ["dup"]
    assert c.validate(STEP.replace("stc_pruner, %s", "stc_pruner"))[0] == 0  # other pipelines still run
    return c.validate("stages:\n  pre_prefill:\n    - {strategy: dup}\n")


@case("plugin-exits-at-import")
def _(c: Ctx):
    def exits() -> Any:
        raise SystemExit(3)

    patch_entry_points(c.monkeypatch, FakeEntryPoint("quitter", "pkg-quitter", exits))
    assert main(["plugins", "--json"]) == 0
    out, err = c.capsys.readouterr()
    assert json.loads(out)["failed"][0]["error"] == "import failed: SystemExit: 3"
    assert err.splitlines() == [
        "warning: tokencompress plugin pkg-quitter:quitter was skipped: import failed: SystemExit: 3"
    ]
    return c.validate("stages:\n  pre_prefill:\n    - {strategy: quitter_pruner}\n")
