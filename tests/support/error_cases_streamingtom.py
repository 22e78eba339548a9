"""Cases of docs/errors.md: StreamingTOM CTR (streamingtom_ctr)."""

from __future__ import annotations

from tests.support.errors import Ctx, case, pipeline_api


@case("streamingtom-budget-too-large")
def _(c: Ctx):
    step = {"strategy": "streamingtom_ctr", "tokens_per_frame": 17}
    return c.api(lambda: pipeline_api({"pre_prefill": [step]}).bind(c.tiny_model()))


@case("streamingtom-after-a-pruner")
def _(c: Ctx):
    steps = [
        {"strategy": "stc_pruner", "tokens_per_frame": 8},
        {"strategy": "streamingtom_ctr", "tokens_per_frame": 4},
    ]

    def run() -> None:
        with pipeline_api({"pre_prefill": steps}).apply(c.tiny_model()) as bound:
            bound.stream().add_frames(c.frames[:2])

    return c.api(run)
