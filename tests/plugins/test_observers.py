"""The observer hook: stage_finished events for every stage of every chunk, none without observers."""

from __future__ import annotations

from torch import nn

from tests.support.models import random_frames
from tests.support.plugin_fakes import plugin
from tokencompress import Pipeline, Registry, Stage, StageEvent


def test_stage_finished_sees_every_stage_of_every_chunk(tiny_llava_ov: nn.Module) -> None:
    events: list[StageEvent] = []

    def tokencompress_stage_finished(event):
        events.append(event)

    reg = Registry(plugins=[plugin("pkg-metrics", tokencompress_stage_finished=tokencompress_stage_finished)])
    pipe = Pipeline.from_dict(
        {"stages": {"pre_prefill": [{"strategy": "stc_pruner", "tokens_per_frame": 5}]}}, reg
    )
    with pipe.apply(tiny_llava_ov) as bound:
        stream = bound.stream()
        stats = stream.add_frames(random_frames(3))
    assert len(stats) == 3
    got = [(e.stream_id, e.chunk_index, e.stage, e.tokens_in, e.tokens_out) for e in events]
    assert got == [
        (stream.id, c, stage, n_in, n_out)
        for c in range(3)
        for stage, n_in, n_out in (
            (Stage.PRE_VIT_BLOCK, 64, 64),
            (Stage.POST_VIT, 64, 64),
            (Stage.PRE_PREFILL, 16, 5),
        )
    ]
    assert all(isinstance(e, StageEvent) and e.seconds >= 0 for e in events)


def test_no_observer_no_events() -> None:
    assert not Registry().has_observers()
