"""Cases of docs/errors.md: models, tokenizers and local plugin files named on the command line."""

from __future__ import annotations

import shutil

from tests.support.errors import Ctx, case
from tests.support.paths import STC_YAML


def _checkpoint_with_empty_tokenizer(c: Ctx) -> str:
    """The tiny checkpoint's weights with a bare tokenizer_config.json: from_pretrained builds a
    tokenizer with no vocabulary from it, which encodes every question to []."""
    ckpt = c.tmp / "no-tokenizer"
    ckpt.mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        if (c.checkpoint / name).exists():
            shutil.copy(c.checkpoint / name, ckpt / name)
    (ckpt / "tokenizer_config.json").write_text('{"tokenizer_class": "Qwen2Tokenizer"}')
    return str(ckpt)


@case("model-no-usable-tokenizer")
def _(c: Ctx):
    # run, not validate: checking a pipeline against a model needs no tokenizer
    return c.cli(
        "run", c.write("name: plain\n"), "--model", _checkpoint_with_empty_tokenizer(c), "--max-frames", "1"
    )


@case("tokenizer-unusable")
def _(c: Ctx):
    return c.cli("validate", STC_YAML, "--tokenizer", _checkpoint_with_empty_tokenizer(c))


@case("tokenizer-not-found")
def _(c: Ctx):
    (c.tmp / "empty").mkdir()
    return c.cli("validate", STC_YAML, "--tokenizer", str(c.tmp / "empty"))


@case("tokenizer-builtin-no-media")
def _(c: Ctx):
    from tokencompress.models.tokenizer import byte_tokenizer

    byte_tokenizer("qwen2_vl").save_pretrained(c.tmp / "qwen2vl-tok")
    return c.cli("validate", STC_YAML, "--tokenizer", str(c.tmp / "qwen2vl-tok"))


@case("plugin-file-missing")
def _(c: Ctx):
    return c.cli("validate", STC_YAML, "--no-model", "--plugin", str(c.tmp / "nope.py"))


@case("plugin-file-import-fails")
def _(c: Ctx):
    return c.cli("plugins", "--plugin", c.write("import math\nmath.sqrt(-1)\n", "broken.py"))
