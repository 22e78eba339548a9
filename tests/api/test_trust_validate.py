"""One bound for every configuration number, and one clean line (never a traceback) for bad input.

Covers :mod:`tokencompress.api.value_bounds` (through the grammar, ``StrategyParams``, ``StreamConfig``
and the CLI), the YAML nesting limit, :func:`tokencompress.cli.terminal.printable` where the CLI
echoes user strings, the bench's result file stem, and the ``--model``/``--plugin`` path errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import BaseModel, Field, ValidationError

from tests.support.models import build_tiny_llava_ov
from tests.support.paths import STC_YAML
from tests.support.plugin_fakes import KeepFirst, plugin
from tokencompress import ConfigError, Pipeline, Registry, Stage
from tokencompress.api.errors import CompatibilityError, TokenCompressError
from tokencompress.cli.main import main
from tokencompress.pipeline.config import load_config


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return code, out, err


def _validate(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str) -> tuple[int, str]:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    code, _, err = _cli(capsys, "validate", str(path), "--no-model")
    return code, err.strip()


# ------------------------------------------------------------------ nesting
def test_yaml_nested_500_deep_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = "name: x\ntarget_options: {a: " + "[" * 500 + "]" * 500 + "}\n"
    assert len(text) < 1100
    code, err = _validate(tmp_path, capsys, text)
    assert code == 2
    assert err.startswith("error: ") and "nested more than 32 levels deep" in err, err
    assert "\n" not in err


def test_nested_python_data_is_refused_too() -> None:
    deep: list[Any] = []
    node = deep
    for _ in range(2000):
        node.append([])
        node = node[0]
    with pytest.raises(ConfigError, match="nested more than 32 levels deep"):
        Pipeline.from_dict({"target_options": {"a": deep}})


def test_real_nesting_still_loads() -> None:
    cfg = load_config("stages:\n  pre_vit_block:\n    - {strategy: tome, r: [1, 2, 3]}\n", Registry())
    assert list(cfg.strategies(Stage.PRE_VIT_BLOCK)[0].params.r) == [1, 2, 3]


# ------------------------------------------------------------------ the number bound
@pytest.mark.parametrize(
    ("yaml", "path", "words"),
    [
        ("stream: {fps: 1.0e+308}\n", "stream.fps", "is too large"),
        (
            "stages:\n  pre_prefill:\n    - {strategy: vidcom2, temperature: 1.0e-46}\n",
            "stages.pre_prefill[0].temperature",
            "float32 computes it as 0",
        ),
        (
            "stages:\n  pre_prefill:\n    - {strategy: vidcom2, temperature: .inf}\n",
            "stages.pre_prefill[0].temperature",
            "expected a finite number",
        ),
        (
            "stages:\n  kv_cache:\n    - {strategy: rekv, n_local: 1000000000000000000000000000000}\n",
            "stages.kv_cache[0].n_local",
            "is too large",
        ),
        (
            "stages:\n  pre_vit_block:\n    - {strategy: tome, r: [1, 2, 3000000000]}\n",
            "stages.pre_vit_block[0].r[2]",
            "is too large",
        ),
        ("stream: {frames_per_chunk: 3000000000}\n", "stream.frames_per_chunk", "is too large"),
    ],
)
def test_every_number_is_bounded_with_its_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], yaml: str, path: str, words: str
) -> None:
    code, err = _validate(tmp_path, capsys, yaml)
    assert code == 2
    assert err.startswith(f"error: {path}: "), err
    assert words in err


def test_bound_edges_are_allowed() -> None:
    cfg = load_config(
        "stream: {fps: 1.0e+9}\nstages:\n  pre_prefill:\n    - {strategy: vidcom2, temperature: 1.2e-38}\n",
        Registry(),
    )
    assert cfg.stream.fps == 1e9
    assert cfg.strategies(Stage.PRE_PREFILL)[0].params.temperature == 1.2e-38


def test_rekv_huge_n_local_is_a_field_error_on_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "stages:\n  kv_cache:\n    - {strategy: rekv, n_local: 1000000000000000000000000000000}\n"
    )
    code, _, err = _cli(capsys, "run", str(path), "--no-progress")
    assert code == 2
    assert err.startswith("error: stages.kv_cache[0].n_local: "), err


def test_tiny_temperature_would_have_kept_nan_budgets() -> None:
    """What the bound prevents: float32 turns 1e-46 into 0 and the softmax into NaN."""
    u = torch.tensor([0.0, -1.0, -2.0])
    assert torch.isnan(torch.softmax(u / 1e-46, dim=0)).any()
    assert not torch.isnan(torch.softmax(u / 1.2e-38, dim=0)).any()


def test_python_callers_get_the_bound_too() -> None:
    from tokencompress.api.types import StreamConfig
    from tokencompress.strategies.vidcom2 import VidCom2

    with pytest.raises(ValidationError, match="float32 computes it as 0"):
        VidCom2(temperature=1e-46)
    with pytest.raises(ValidationError, match="is too large"):
        StreamConfig(fps=1e308)


class _LooseParams(BaseModel):
    """A third-party Params on pydantic's own BaseModel, not StrategyParams."""

    tokens_per_frame: int = 4
    sharpness: float = Field(1.0, gt=0)


class _Loose(KeepFirst):
    name = "loose"
    Params = _LooseParams  # type: ignore[assignment]


def test_third_party_params_are_bounded_by_the_grammar() -> None:
    reg = Registry(plugins=[plugin("pkg-loose", [_Loose])], entry_points=False)
    with pytest.raises(ConfigError) as err:
        Pipeline.from_dict({"stages": {"pre_prefill": [{"strategy": "loose", "sharpness": 1e-40}]}}, reg)
    assert str(err.value).startswith("stages.pre_prefill[0].sharpness: 1e-40 is too small")


@pytest.mark.parametrize("command", ["run", "bench"])
def test_cli_fps_huge_is_refused(capsys: pytest.CaptureFixture[str], command: str) -> None:
    code, _, err = _cli(capsys, command, STC_YAML, "--fps", "1e308")
    assert code == 2
    assert err.strip() == (
        "error: --fps: 1e+308 is too large; configuration numbers are at most 1e+09 in magnitude"
    )


def test_cli_integer_options_are_bounded(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _cli(capsys, "run", STC_YAML, "--prefill-chunks", str(10**30))
    assert code == 2
    assert err.startswith("error: --prefill-chunks: 1000000000000000000000000000000 is too large")


# ------------------------------------------------------------------ layer strategies
def test_two_layer_computing_strategies_get_one_advice() -> None:
    model = build_tiny_llava_ov()
    messages = []
    for order in (["stc_cacher", "tome"], ["tome", "stc_cacher"]):
        steps = [{"strategy": s, **({"r": 2} if s == "tome" else {})} for s in order]
        with pytest.raises(CompatibilityError) as err:
            Pipeline.from_dict({"stages": {"pre_vit_block": steps}}).bind(model)
        messages.append(str(err.value))
    assert messages[0] == messages[1], messages
    assert "keep one of them" in messages[0] and " last" not in messages[0]


# ------------------------------------------------------------------ terminal output
def test_printable_escapes_controls() -> None:
    from tokencompress.cli.terminal import printable

    assert printable("a\x1b[31mb\r\x07\x00\x7f\x9bé\n\t") == "a\\x1b[31mb\\x0d\\x07\\x00\\x7f\\x9bé\\x0a\\x09"
    assert printable("plain ünïcode") == "plain ünïcode"


def test_cli_error_printer_escapes_user_strings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _cli(capsys, "validate", str(tmp_path / "a\x1b[2Jb\x07.yaml"), "--no-model")
    assert code == 2
    assert "\x1b" not in err and "\x07" not in err
    assert "a\\x1b[2Jb\\x07.yaml: pipeline file not found" in err


def test_cli_ok_line_escapes_the_file_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p\rq.yaml"
    path.write_text("name: x\n")
    code, out, _ = _cli(capsys, "validate", str(path), "--no-model")
    assert code == 0
    assert "\r" not in out and "p\\x0dq.yaml is valid" in out


def test_unknown_strategy_name_is_escaped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _validate(tmp_path, capsys, 'stages:\n  pre_prefill:\n    - {strategy: "x\\e[31my"}\n')
    assert code == 2
    assert "\x1b" not in err and "x\\x1b[31my" in err


# ------------------------------------------------------------------ bench file names
def test_result_stem_is_bounded_and_distinct() -> None:
    from tokencompress.bench.naming import MAX_STEM, result_stem

    a, b = result_stem("x" * 300 + "a"), result_stem("x" * 300 + "b")
    assert len(a) <= MAX_STEM and len(b) <= MAX_STEM and a != b
    assert result_stem("../../etc/passwd\x1b") == "_._.._etc_passwd_"
    assert result_stem("stc") == "stc"
    assert result_stem("") == "pipeline"


def test_bench_long_pipeline_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The output check passes (no ENAMETOOLONG); the run then stops at the missing model."""
    path = tmp_path / "p.yaml"
    path.write_text("name: " + "n" * 300 + "\n")
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = _cli(capsys, "bench", str(path), "--out", str(out), "--model", str(tmp_path / "missing"))
    assert code == 2
    assert "folder does not exist" in err


# ------------------------------------------------------------------ --model, --plugin
@pytest.mark.parametrize("given", ["/missing/dir", "./missing", "~/missing-model", "a/b/c", "missing/"])
def test_model_path_that_does_not_exist(capsys: pytest.CaptureFixture[str], given: str) -> None:
    code, _, err = _cli(capsys, "validate", STC_YAML, "--model", given)
    assert code == 2
    assert err.strip() == (
        f"error: --model {given}: folder does not exist; give a checkpoint folder or a hub id (org/name)"
    )


def test_hub_ids_are_not_paths() -> None:
    from tokencompress.models.loading import looks_like_path

    assert not looks_like_path("llava-hf/llava-onevision-qwen2-0.5b-ov-hf")
    assert not looks_like_path("gpt2")
    assert looks_like_path("/abs/model") and looks_like_path(".") and looks_like_path("~/m")


def test_plugin_device_is_not_a_python_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _cli(capsys, "validate", STC_YAML, "--no-model", "--plugin", "/dev/null")
    assert code == 2
    assert err.strip() == "error: --plugin /dev/null: not a regular Python file; give a .py file"


# ------------------------------------------------------------------ bench counts, dead checks
def test_bench_counts_are_checked_by_one_function(capsys: pytest.CaptureFixture[str]) -> None:
    from tokencompress.bench.running import check_counts

    with pytest.raises(TokenCompressError, match=r"^repeats must be >= 1, got 0$"):
        check_counts(0, 1)
    with pytest.raises(TokenCompressError, match=r"^--warmup must be >= 0, got -1$"):
        check_counts(1, -1, "--")
    code, _, err = _cli(capsys, "bench", STC_YAML, "--warmup", "-1")
    assert (code, err.strip()) == (2, "error: --warmup must be >= 0, got -1")
    code, _, err = _cli(capsys, "bench", STC_YAML, "--repeats", "0")
    assert (code, err.strip()) == (2, "error: --repeats must be >= 1, got 0")


def test_at_least_one_checks_name_real_options() -> None:
    from tokencompress.cli import args as cli_args
    from tokencompress.cli.parser import build_parser

    parser = build_parser()
    dests = {
        a.dest
        for sub in parser._subparsers._group_actions[0].choices.values()  # type: ignore[union-attr]
        for a in sub._actions
    }
    assert set(cli_args._AT_LEAST_ONE) <= dests, set(cli_args._AT_LEAST_ONE) - dests
