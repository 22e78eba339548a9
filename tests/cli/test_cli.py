"""The command line, in process: good commands work, every user mistake is one ``error:`` line and exit 2.

The built-in model (LLaVA-OV geometry, 196 pooled tokens per frame) is built once per session
(tests/conftest.py) and handed to every command through ``build_default_model``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import pytest

from tests.support.cli import ROW, assert_one_line_error, run_cli
from tests.support.models import build_tiny_llava_ov
from tests.support.paths import STC_YAML
from tests.support.plugin_fakes import AttentionProbe, FakeEntryPoint, patch_entry_points, plugin
from tokencompress.cli.main import main
from tokencompress.models import loading as models


@pytest.fixture
def cached_builtin(monkeypatch: pytest.MonkeyPatch, builtin_model: models.LoadedModel) -> None:
    monkeypatch.setattr(models, "build_default_model", lambda *a, **k: builtin_model)


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# ------------------------------------------------------------ good commands
def test_plugins_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "plugins", "--json")
    assert code == 0
    listing = json.loads(out)
    assert {"stc_cacher", "stc_pruner"} <= {s["name"] for s in listing["strategies"]}
    assert all({"name", "package", "version"} <= set(s) for s in listing["strategies"] + listing["targets"])
    rows = {s["name"]: s for s in listing["strategies"]}
    assert rows["stc_pruner"]["stateful"] is True and rows["stc_pruner"]["stage"] == "pre_prefill"
    assert rows["tome"]["needs"] == ["block_adapter", "subset_attention"]


def test_schema_prints_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "schema")
    assert code == 0
    schema = json.loads(out)
    assert "stages" in schema["properties"] and "stc_pruner" in out


def test_validate_without_model(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "validate", STC_YAML, "--no-model")
    assert code == 0 and out.startswith("ok: ") and "valid for file" in out and "stc_pruner" in out


def test_validate_against_builtin_model(capsys: pytest.CaptureFixture[str], cached_builtin: None) -> None:
    code, out, _ = run_cli(capsys, "validate", STC_YAML)
    assert code == 0 and "target llava_onevision" in out


# ------------------------------------------------------------- bad pipelines
BAD_PIPELINES = {
    "yaml-syntax": ("name: t\nstream: fps: 1\n", ["invalid YAML at line 2"]),
    "unknown-key": ("name: t\nstagez: {}\n", ["unknown key 'stagez'", "did you mean 'stages'"]),
    "unknown-strategy": (
        "stages:\n  pre_prefill:\n    - {strategy: stc_prunr, tokens_per_frame: 60}\n",
        ["unknown strategy 'stc_prunr'", "did you mean 'stc_pruner'"],
    ),
    "out-of-range": (
        "stages:\n  pre_prefill:\n    - {strategy: stc_pruner, tokens_per_frame: 0}\n",
        ["stages.pre_prefill[0].tokens_per_frame"],
    ),
    "wrong-stage": (
        "stages:\n  post_vit:\n    - {strategy: stc_pruner}\n",
        ["runs at stage 'pre_prefill'", "stages.pre_prefill"],
    ),
    "fps": ("stream: {fps: 0}\n", ["stream.fps"]),
}


@pytest.mark.parametrize("case", sorted(BAD_PIPELINES))
def test_bad_pipeline_is_one_error_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, case: str
) -> None:
    text, needles = BAD_PIPELINES[case]
    path = write(tmp_path, text)
    assert_one_line_error(*run_cli(capsys, "validate", path, "--no-model")[::2], *needles)
    # run refuses the same file before it loads a model or opens a video
    assert_one_line_error(*run_cli(capsys, "run", path, "--no-progress")[::2], *needles)


def test_missing_pipeline_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert_one_line_error(*run_cli(capsys, "validate", str(tmp_path / "nope.yaml"))[::2], "not found")


def test_budget_larger_than_a_frame(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, cached_builtin: None
) -> None:
    path = write(tmp_path, "stages:\n  pre_prefill:\n    - {strategy: stc_pruner, tokens_per_frame: 197}\n")
    assert_one_line_error(*run_cli(capsys, "validate", path)[::2], "197", "196 tokens a frame has")
    assert_one_line_error(*run_cli(capsys, "run", path, "--max-frames", "1", "--no-progress")[::2], "196")


def test_strategy_the_target_cannot_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cached_builtin: None
) -> None:
    probe = plugin("pkg-probe", [AttentionProbe])
    patch_entry_points(monkeypatch, FakeEntryPoint("probe", "pkg-probe", lambda: probe))
    path = write(tmp_path, "stages:\n  post_vit:\n    - {strategy: attention_probe}\n")
    assert_one_line_error(
        *run_cli(capsys, "validate", path)[::2], "'attention_probe'", "'llava_onevision'", "attention"
    )


# ---------------------------------------------------------------- bad videos
def _no_frames_video(path: Path) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        container.start_encoding()


@pytest.mark.parametrize("kind", ["missing", "corrupt", "empty-file", "no-frames"])
def test_bad_video_is_one_error_line(capsys: pytest.CaptureFixture[str], tmp_path: Path, kind: str) -> None:
    video = tmp_path / ("v.avi" if kind == "no-frames" else "v.mp4")
    if kind == "corrupt":
        video.write_bytes(os.urandom(4096))
    elif kind == "empty-file":
        video.write_bytes(b"")
    elif kind == "no-frames":
        _no_frames_video(video)
    line = assert_one_line_error(
        *run_cli(capsys, "run", STC_YAML, "--video", str(video), "--no-progress")[::2]
    )
    assert str(video) in line
    if kind == "missing":
        assert "not found" in line
    if kind == "no-frames":
        assert "no frames" in line


# ----------------------------------------------------------------- end to end
def test_run_stc_end_to_end(capsys: pytest.CaptureFixture[str], tmp_path: Path, cached_builtin: None) -> None:
    out_json = tmp_path / "run.json"
    code, out, err = run_cli(
        capsys,
        "run",
        STC_YAML,
        "--max-frames",
        "3",
        "--ask",
        "What happens?",
        "--no-progress",
        "--json",
        str(out_json),
    )
    assert code == 0, err
    rows = [m.groups() for m in map(ROW.match, out.splitlines()) if m]
    assert [tuple(map(int, r)) for r in rows] == [(c, 1, 729, 729, 729, 196, 60) for c in range(3)]
    assert "RANDOM weights" in out and "Q: What happens?" in out
    payload = json.loads(out_json.read_text())
    summary = payload["summary"]
    assert (summary["chunks"], summary["frames"]) == (3, 3)
    assert summary["llm_token_ratio"] == pytest.approx(60 / 196)
    assert (summary["llm_tokens_before"], summary["llm_tokens_after"]) == (3 * 196, 3 * 60)
    assert [c["pre_prefill"] for c in payload["chunks"]] == [[196, 60]] * 3
    assert payload["pipeline"]["stages"]["pre_prefill"][0] == {
        **payload["pipeline"]["stages"]["pre_prefill"][0],
        "strategy": "stc_pruner",
        "tokens_per_frame": 60,
    }
    assert payload["answer"]["question"] == "What happens?"


def test_run_with_a_saved_checkpoint(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from tokencompress.models.tokenizer import byte_tokenizer

    ckpt = tmp_path / "tiny-llava-ov"
    build_tiny_llava_ov().save_pretrained(ckpt)
    byte_tokenizer("llava_onevision").save_pretrained(ckpt)
    pipe = write(
        tmp_path,
        "name: tiny\nstages:\n  pre_vit_block:\n    - {strategy: stc_cacher}\n"
        "  pre_prefill:\n    - {strategy: stc_pruner, tokens_per_frame: 8}\n",
    )
    code, out, err = run_cli(
        capsys,
        "run",
        pipe,
        "--model",
        str(ckpt),
        "--max-frames",
        "2",
        "--no-progress",
        "--ask",
        "Hi?",
        "--max-new-tokens",
        "2",
    )
    assert code == 0, err
    assert f"model: {ckpt}" in out and "LlavaOnevisionForConditionalGeneration" in out
    rows = [tuple(map(int, m.groups())) for m in map(ROW.match, out.splitlines()) if m]
    assert rows == [(c, 1, 64, 64, 64, 16, 8) for c in range(2)]


def test_model_directory_that_is_not_a_checkpoint(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert_one_line_error(
        *run_cli(capsys, "validate", STC_YAML, "--model", str(tmp_path))[::2], "cannot load model directory"
    )


def test_console_script_help() -> None:
    exe = shutil.which(
        "tokencompress", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    )
    assert exe, "console script 'tokencompress' is not installed (pip install -e .)"
    done = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for command in ("run", "validate", "schema", "plugins"):
        assert command in done.stdout


@pytest.mark.parametrize(
    ("extra", "needle"),
    [(["--fps", "0"], "--fps must be > 0"), (["--json", "/nonexistent-dir/x.json"], "cannot write")],
)
def test_cli_run_bad_options_are_one_line_errors(tmp_path, capsys, extra, needle):
    from tests.support.models import build_tiny_llava_ov
    from tokencompress.models.tokenizer import byte_tokenizer

    build_tiny_llava_ov().save_pretrained(tmp_path)
    byte_tokenizer("llava_onevision").save_pretrained(tmp_path)
    capsys.readouterr()  # drop the save_pretrained progress bar
    args = ["run", "pipelines/baseline.yaml", "--model", str(tmp_path), "--max-frames", "1", "--no-progress"]
    code = main([*args, *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
