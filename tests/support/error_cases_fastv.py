"""Cases of docs/errors.md: FastV and PyramidDrop (stage in_decoder)."""

from __future__ import annotations

from tests.support.errors import Ctx, case, pipeline_api

STEP = "stages:\n  in_decoder:\n    - %s\n"


def _bind(c: Ctx, stages: dict, model=None):  # noqa: ANN001, ANN202
    pipe = pipeline_api(stages)
    return c.api(lambda: pipe.bind(model if model is not None else c.tiny_model()))


@case("fastv-layer-zero")
def _(c: Ctx):
    return c.validate(STEP % "{strategy: fastv, layer: 0}")


@case("fastv-ratio-outside")
def _(c: Ctx):
    return c.validate(STEP % "{strategy: fastv, ratio: 1.5}")


@case("pdrop-layers-not-increasing")
def _(c: Ctx):
    return c.validate(STEP % "{strategy: pdrop, layer_list: [2, 1]}")


@case("pdrop-ratios-per-boundary")
def _(c: Ctx):
    return c.validate(STEP % "{strategy: pdrop, layer_list: [1, 2], ratios: [0.5]}")


@case("fastv-layer-beyond-depth")
def _(c: Ctx):
    return _bind(c, {"in_decoder": [{"strategy": "fastv", "layer": 2}]})


@case("fastv-keeps-nothing")
def _(c: Ctx):
    return _bind(c, {"in_decoder": [{"strategy": "fastv", "layer": 1, "ratio": 1.0}]})


@case("pdrop-keeps-nothing")
def _(c: Ctx):
    return _bind(c, {"in_decoder": [{"strategy": "pdrop", "layer_list": [1], "ratio": 0.01}]})


@case("in-decoder-no-decoder-layers")
def _(c: Ctx):
    from tokencompress.targets.llava.llava_onevision import LlavaOnevisionTarget

    c.monkeypatch.setattr(LlavaOnevisionTarget, "decoder_stack", lambda self: None)
    return _bind(c, {"in_decoder": [{"strategy": "fastv", "layer": 1}]})


@case("in-decoder-two-strategies")
def _(c: Ctx):
    steps = [{"strategy": "fastv", "layer": 1}, {"strategy": "pdrop", "layer_list": [1]}]
    return _bind(c, {"in_decoder": steps})


@case("pdrop-renumber-mrope")
def _(c: Ctx):
    from tokencompress.targets.qwen.qwen2_vl import Qwen2VLTarget

    return _bind(c, {"in_decoder": [{"strategy": "pdrop", "layer_list": [1]}]}, Qwen2VLTarget.tiny_model())


@case("in-decoder-kv-equal-lengths")
def _(c: Ctx):
    return _bind(c, {"in_decoder": [{"strategy": "fastv", "layer": 1}], "kv_cache": [{"strategy": "rekv"}]})


@case("in-decoder-window-renumber")
def _(c: Ctx):
    stages = {
        "in_decoder": [{"strategy": "pdrop", "layer_list": [1]}],
        "kv_cache": [{"strategy": "sliding_window"}],
    }
    return _bind(c, stages)
