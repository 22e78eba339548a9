"""Cases of docs/errors.md: InfiniPot-V."""

from __future__ import annotations

from tests.support.errors import Ctx, case
from tokencompress import Pipeline


def _bind(c: Ctx, stages: dict, frames_per_chunk: int = 1):
    pipe = Pipeline.from_dict({"stages": stages, "stream": {"frames_per_chunk": frames_per_chunk}})
    return c.api(lambda: pipe.bind(c.tiny_model()))


def _kv(**params) -> list[dict]:
    return [{"strategy": "infinipot_v", **params}]


@case("infinipot-v-variable-count")
def _(c: Ctx):
    return _bind(c, {"post_vit": [{"strategy": "evs", "video_pruning_rate": 0.5}], "kv_cache": _kv()})


@case("infinipot-v-budget-one-chunk")
def _(c: Ctx):
    return _bind(c, {"kv_cache": _kv(budget_frames=4)}, frames_per_chunk=4)


@case("infinipot-v-no-recent-frames")
def _(c: Ctx):
    return _bind(c, {"kv_cache": _kv(budget_frames=4, query_ratio=0.2)})


@case("infinipot-v-tar-share-too-small")
def _(c: Ctx):
    return _bind(c, {"kv_cache": _kv(budget_frames=8, tar_ratio=0.1)}, frames_per_chunk=2)


@case("infinipot-v-grid-rows")
def _(c: Ctx):
    return _bind(c, {"kv_cache": _kv(adaptive_pooling=True, grid_rows=3)})
