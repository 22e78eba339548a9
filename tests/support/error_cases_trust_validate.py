"""Cases of docs/errors.md: the one bound of configuration numbers, nesting, layer strategies,
and paths given to --model and --plugin."""

from __future__ import annotations

from tests.support.errors import Ctx, case
from tests.support.paths import STC_YAML


@case("yaml-nested-too-deep")
def _(c: Ctx):
    return c.validate("name: x\ntarget_options: {a: " + "[" * 500 + "]" * 500 + "}\n")


@case("number-too-large")
def _(c: Ctx):
    return c.validate("stream: {fps: 1.0e+308}\n")


@case("number-int-too-large")
def _(c: Ctx):
    return c.validate(
        "stages:\n  kv_cache:\n    - {strategy: rekv, n_local: 1000000000000000000000000000000}\n"
    )


@case("number-underflows-float32")
def _(c: Ctx):
    return c.validate("stages:\n  pre_prefill:\n    - {strategy: vidcom2, temperature: 1.0e-46}\n")


@case("number-not-finite")
def _(c: Ctx):
    return c.validate("stages:\n  pre_prefill:\n    - {strategy: vidcom2, temperature: .inf}\n")


@case("number-too-large-api")
def _(c: Ctx):
    from tokencompress import Pipeline

    return c.api(
        lambda: Pipeline.from_dict({"stages": {"pre_vit_block": [{"strategy": "tome", "r": [1, 2**40]}]}})
    )


@case("cli-number-too-large")
def _(c: Ctx):
    return c.cli("run", STC_YAML, "--fps", "1e308")


@case("layer-strategies-together")
def _(c: Ctx):
    text = "stages:\n  pre_vit_block:\n    - {strategy: tome, r: 2}\n    - {strategy: stc_cacher}\n"
    return c.cli("validate", c.write(text))


@case("model-folder-missing")
def _(c: Ctx):
    return c.cli("validate", STC_YAML, "--model", str(c.tmp / "missing" / "dir"))


@case("plugin-not-regular-file")
def _(c: Ctx):
    return c.cli("validate", STC_YAML, "--no-model", "--plugin", "/dev/null")


@case("bench-warmup")
def _(c: Ctx):
    return c.cli("bench", STC_YAML, "--warmup", "-1")
