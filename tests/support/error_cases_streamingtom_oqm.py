"""Cases of docs/errors.md: StreamingTOM OQM (streamingtom_oqm)."""

from __future__ import annotations

import torch

from tests.support.errors import Ctx, case
from tokencompress import Pipeline


def _pipe(stages: dict, frames_per_chunk: int = 1) -> Pipeline:
    return Pipeline.from_dict({"stages": stages, "stream": {"frames_per_chunk": frames_per_chunk}})


def _bind(c: Ctx, stages: dict):
    return c.api(lambda: _pipe(stages).bind(c.tiny_model()))


def _kv(**params) -> list[dict]:
    return [{"strategy": "streamingtom_oqm", **params}]


@case("streamingtom-oqm-bits")
def _(c: Ctx):
    return c.api(lambda: _pipe({"kv_cache": _kv(bits=3)}))


@case("streamingtom-oqm-group-size")
def _(c: Ctx):
    return _bind(c, {"kv_cache": _kv(group_size=5)})


@case("streamingtom-oqm-group-bytes")
def _(c: Ctx):
    return _bind(c, {"kv_cache": _kv(bits=2, group_size=2)})


@case("streamingtom-oqm-window")
def _(c: Ctx):
    return _bind(c, {"kv_cache": _kv(window_tokens=20)})


@case("streamingtom-oqm-variable-count")
def _(c: Ctx):
    return _bind(c, {"post_vit": [{"strategy": "evs", "video_pruning_rate": 0.5}], "kv_cache": _kv()})


@case("streamingtom-oqm-text-after-frames")
def _(c: Ctx):
    def run() -> None:
        with _pipe({"kv_cache": _kv()}).apply(c.tiny_model()) as bound:
            stream = bound.stream()
            stream.add_frames(c.frames[:1])
            stream.prefill_ids(torch.tensor([5, 6]))

    return c.api(run)
