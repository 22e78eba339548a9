"""The built-in random-weight models of the other targets, end to end through ``run``.

``builtin-qwen`` (Qwen2.5-VL), ``builtin-qwen3`` (Qwen3-VL, DeepStack) and
``builtin-llava-next-video`` are the targets' own tiny test models with the offline tokenizer's
vocabulary and media ids, so a newcomer can stream through every target without a checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.paths import PIPELINES
from tokencompress.cli.main import main
from tokencompress.models import loading as models
from tokencompress.models.builtin import BUILTIN_TARGET_MODELS

pytestmark = pytest.mark.slow


CASES = [
    # --model, pipeline, frames, target, the pre_prefill column of every chunk
    ("builtin-qwen", "livecc_stc.yaml", 4, "qwen2_5_vl", "256→78"),
    ("builtin-qwen3", "livecc_qwen3_stc.yaml", 4, "qwen3_vl", "196→60"),
    ("builtin-llava-next-video", "llava_next_video_stc.yaml", 2, "llava_next_video", "144→44"),
]


@pytest.mark.parametrize(("name", "pipeline", "frames", "target", "kept"), CASES, ids=[c[0] for c in CASES])
def test_run_streams_through_each_builtin_target_model(name, pipeline, frames, target, kept, capsys) -> None:
    argv = ["run", str(PIPELINES / pipeline), "--model", name, "--max-frames", str(frames), "--ask", "what?"]
    code = main([*argv, "--max-new-tokens", "2", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    model_line = next(line for line in out.splitlines() if line.startswith("model: "))
    assert "RANDOM weights: answers are noise" in model_line
    assert f"on target {target};" in out
    rows = [line for line in out.splitlines() if line.strip()[:1].isdigit() and "→" in line]
    assert len(rows) == (frames // 2 if target.startswith("qwen") else frames)
    assert all(kept in row for row in rows), out
    assert f"{frames} encoded" in out and "A (random weights: noise):" in out


@pytest.mark.parametrize("name", sorted(BUILTIN_TARGET_MODELS))
def test_builtin_media_ids_are_the_tokenizers(name: str) -> None:
    loaded = models.load_model(name)
    assert loaded.random_weights and "RANDOM weights" in loaded.description
    cfg = loaded.model.config
    assert cfg.get_text_config().vocab_size == len(loaded.tokenizer)
    for attr, token in BUILTIN_TARGET_MODELS[name].media.items():
        assert getattr(cfg, attr) == loaded.tokenizer.convert_tokens_to_ids(token), attr
    assert models.load_model(BUILTIN_TARGET_MODELS[name].name).description == loaded.description


def test_help_lists_every_builtin_model(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in models.BUILTIN_MODELS:
        assert f"'{name}'" in text, name
    assert "RANDOM weights" in text


def test_builtin_qwen_refuses_a_tokenizer_without_its_media_tokens(tmp_path: Path, capsys) -> None:
    from tokencompress.models.tokenizer import byte_tokenizer

    byte_tokenizer("llava_onevision").save_pretrained(tmp_path)
    code = main(
        [
            "validate",
            str(PIPELINES / "livecc_stc.yaml"),
            "--model",
            "builtin-qwen",
            "--tokenizer",
            str(tmp_path),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "has no <|image_pad|> token, which the built-in qwen2_5_vl model needs" in err
