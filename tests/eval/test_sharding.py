"""Sharding without processes: every rank of a world runs in turn, rank 0 gathers last."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokencompress.eval.fakes import ScriptedEngine
from tokencompress.eval.loaders import load_benchmark
from tokencompress.eval.loading import LoadOptions
from tokencompress.eval.runner import Settings, evaluate
from tokencompress.eval.sampling import FrameRule
from tokencompress.eval.shard import Shard


class Mailbox(Shard):
    """Rank ``r`` of ``world``; gather hands its records to a shared box, rank 0 reads them all."""

    def __init__(self, rank, world, box):
        super().__init__(rank, world)
        self.box = box

    def gather(self, obj):
        self.box[self.rank] = obj
        return [self.box[r] for r in range(self.world)] if self.rank == 0 else None


def run_world(m, out, world):
    loaded = load_benchmark("ovo-bench", Path(m["root"]), LoadOptions())
    settings = Settings("ovo-bench", rule=FrameRule("rekv_stride", 1.0))
    box, asked = {}, {}
    for rank in reversed(range(world)):  # rank 0 last: it gathers
        eng = ScriptedEngine(m["responses"], "baseline", "b")
        res = evaluate(loaded, [eng], settings, out, Mailbox(rank, world, box))
        asked[rank] = {c.qid for c in eng.calls}
    return res, box, asked


@pytest.mark.parametrize("world", [2, 3, 16])
def test_any_world_gives_the_single_process_result(synth, tmp_path, world):
    m = synth["ovo-bench"]
    single, _, _ = run_world(m, tmp_path / "one", 1)
    res, box, asked = run_world(m, tmp_path / "many", world)
    assert res["variants"][0]["scores"] == single["variants"][0]["scores"]
    one = (tmp_path / "one" / "predictions.jsonl").read_text().splitlines()
    many = (tmp_path / "many" / "predictions.jsonl").read_text().splitlines()
    strip = lambda lines: [{k: v for k, v in json.loads(x).items() if k != "rank"} for x in lines]  # noqa: E731
    assert strip(many) == strip(one)
    owners = [r for r in range(world) for _ in asked[r]]
    assert sorted(q for r in range(world) for q in asked[r]) == sorted(m["responses"])  # each query once
    assert len(owners) == 20
    assert all(box[r] == [] for r in range(3, world))  # ranks without a video still join the gather
    videos = {json.loads(x)["qid"]: json.loads(x)["rank"] for x in many}
    assert len({videos[q] for q in ("0", "1", "5", "7", "9_0")}) == 1  # one video never spans ranks
