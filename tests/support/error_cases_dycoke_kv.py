"""Cases of docs/errors.md: DyCoke's decode-time KV pruning (``dycoke_kv``) and the kv_cache stage's
one memory + one decode policy rule."""

from __future__ import annotations

from tests.support.errors import Ctx, case
from tokencompress import Pipeline


def _bind(c: Ctx, kv: list[dict]):
    pipe = Pipeline.from_dict({"stages": {"kv_cache": kv}})
    return c.api(lambda: pipe.bind(c.tiny_model()))


@case("kv-cache-two-memories")
def _(c: Ctx):
    return _bind(c, [{"strategy": "sliding_window"}, {"strategy": "rekv"}])


@case("dycoke-kv-two-policies")
def _(c: Ctx):
    return _bind(c, [{"strategy": "dycoke_kv"}, {"strategy": "dycoke_kv", "p": 0.8}])


@case("dycoke-kv-layer-depth")
def _(c: Ctx):
    return _bind(c, [{"strategy": "dycoke_kv", "l": 3}])


@case("dycoke-kv-p-range")
def _(c: Ctx):
    text = "stages:\n  kv_cache:\n    - {strategy: dycoke_kv, p: 1.0}\n"
    return c.cli("validate", c.write(text))
