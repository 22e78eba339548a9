"""Cases of docs/errors.md: checkpoints and the built-in models of the other targets."""

from __future__ import annotations

from tests.support.errors import Ctx, case
from tests.support.paths import ROOT


@case("tokenizer-builtin-target-no-media")
def _(c: Ctx):
    from tokencompress.models.tokenizer import byte_tokenizer

    byte_tokenizer("llava_onevision").save_pretrained(c.tmp / "llava-tok")
    livecc = str(ROOT / "pipelines" / "livecc_stc.yaml")
    return c.cli("validate", livecc, "--model", "builtin-qwen", "--tokenizer", str(c.tmp / "llava-tok"))
