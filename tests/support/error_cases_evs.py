"""Cases of docs/errors.md: EVS."""

from __future__ import annotations

from tests.support.errors import Ctx, case, pipeline_api


@case("evs-rate-keeps-nothing")
def _(c: Ctx):
    pipe = pipeline_api({"post_vit": [{"strategy": "evs", "video_pruning_rate": 0.95}]})
    return c.api(lambda: pipe.bind(c.tiny_model()))
