"""What the README claims about the command line is what the command line does.

Quoted error messages are the real ones, the options said to be on a command are on it, the
transformers release the README and pyproject call tested is the one installed, and every
built-in model is named.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.paths import ROOT
from tokencompress.cli.main import main
from tokencompress.cli.parser import build_parser
from tokencompress.models import loading as models

README = (ROOT / "README.md").read_text()
FLAT = " ".join(README.split())


def _error_line(capsys: pytest.CaptureFixture[str], tmp_path: Path, step: str, *extra: str) -> str:
    path = tmp_path / "p.yaml"
    path.write_text(f"name: x\nstages:\n  pre_prefill:\n    - {{strategy: stc_pruner, {step}}}\n")
    assert main(["validate", str(path), *extra]) == 2
    return capsys.readouterr().err.strip()


def test_the_readme_quotes_the_real_field_error(capsys, tmp_path: Path) -> None:
    line = _error_line(capsys, tmp_path, "tokens_per_frame: 0", "--no-model")
    assert line.startswith("error: stages.pre_prefill[0].tokens_per_frame:")
    assert f"`{line}`" in FLAT


def test_the_readme_quotes_the_real_budget_error(capsys, tmp_path: Path) -> None:
    line = _error_line(capsys, tmp_path, "tokens_per_frame: 250")  # against the built-in model
    assert f"`{line}`" in FLAT


def _commands() -> dict[str, set[str]]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return {name: set(sub._option_string_actions) for name, sub in action.choices.items()}


CLAIM = re.compile(r"((?:`--[\w-]+`(?:, | and )?)+) on ((?:`\w+`(?:, | and )?)+|every command)")


def test_options_the_readme_puts_on_a_command_are_on_it() -> None:
    sentence = FLAT[FLAT.index("An option means the same") :]
    sentence = sentence[: sentence.index("--help` lists them")]
    commands = _commands()
    claims = CLAIM.findall(sentence)
    assert len(claims) >= 3, sentence
    for options, where in claims:
        names = list(commands) if where == "every command" else re.findall(r"`(\w+)`", where)
        for command in names:
            for option in re.findall(r"`(--[\w-]+)`", options):
                assert option in commands[command], f"README: {option} on {command}; it has none"
    assert "--max-frames" not in commands["eval"] and "has no `--max-frames`" in sentence


def test_the_tested_transformers_is_the_installed_one() -> None:
    """A fresh install gets the newest 5.x: run the suite on it, then update both statements."""
    import transformers

    installed = ".".join(transformers.__version__.split(".")[:2])
    pyproject = (ROOT / "pyproject.toml").read_text()
    tested = re.search(r"# tested: (\d+\.\d+)(?:\.\d+)? \(whole suite\)", pyproject)
    assert tested is not None and tested[1] == installed, (tested and tested[0], transformers.__version__)
    headers = re.findall(r"\| model class \(transformers (\d+\.\d+)\) \|", README)
    assert len(headers) == 2 and set(headers) == {installed}, headers


def test_the_readme_names_every_builtin_model() -> None:
    for name in models.BUILTIN_MODELS:
        assert f"--model {name}`" in FLAT or f"--model {name} " in FLAT, name
