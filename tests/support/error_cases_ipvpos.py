"""Cases of docs/errors.md: InfiniPot-V's ``positions: compact``."""

from __future__ import annotations

import copy

from tests.support.errors import Ctx, case
from tokencompress import Pipeline

COMPACT = {"kv_cache": [{"strategy": "infinipot_v", "positions": "compact"}]}


@case("infinipot-v-compact-mrope")
def _(c: Ctx):
    from tokencompress.targets.qwen.qwen2_vl import Qwen2VLTarget

    pipe = Pipeline.from_dict({"target_options": {"max_pixels": 112 * 112}, "stages": COMPACT})
    return c.api(lambda: pipe.bind(Qwen2VLTarget.tiny_model(seed=1)))


@case("infinipot-v-compact-moving-rope")
def _(c: Ctx):
    model = copy.deepcopy(c.tiny_model())
    model.config.get_text_config().rope_parameters = {
        "rope_type": "dynamic",
        "rope_theta": 1e4,
        "factor": 2.0,
    }
    return c.api(lambda: Pipeline.from_dict({"stages": COMPACT}).bind(model))
