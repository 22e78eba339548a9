"""Retention from aggregated scores, sharding by whole video, resuming from the logs."""

from __future__ import annotations

import json

import pytest

from tokencompress.eval.aggregate import retention
from tokencompress.eval.fakes import ScriptedEngine
from tokencompress.eval.shard import assign

from .helpers import run_scripted

ZERO_TASKS = {"HLD", "OJR", "ATR", "FPD"}


def test_retention_identical_and_always_wrong(synth, tmp_path):
    m = synth["ovo-bench"]
    same = ScriptedEngine(m["responses"], "same", "s")
    wrong = ScriptedEngine({}, "always_Z", "z")  # every call answered "Z"
    res, _, _ = run_scripted("ovo-bench", m["root"], tmp_path, m["responses"], extra=(same, wrong))
    base, s, z = res["variants"]
    assert s["retention"]["total"] == {"retention": 100.0, "delta": 0.0}
    assert all(v["retention"] == 100.0 for v in s["retention"]["categories"].values())
    for task, v in s["retention"]["tasks"].items():
        assert v["retention"] == (None if task in ZERO_TASKS else 100.0), task
    assert z["retention"]["total"]["retention"] == 0.0
    for task, v in z["retention"]["tasks"].items():
        assert v["retention"] == (None if task in ZERO_TASKS else 0.0), task  # null where the baseline is 0


def test_retention_is_a_ratio_of_aggregates_not_a_mean_of_items():
    base = {"total": 50.0, "categories": {}, "tasks": {"A": {"score": 100.0}, "B": {"score": 0.0}}}
    pipe = {"total": 25.0, "categories": {}, "tasks": {"A": {"score": 50.0}, "B": {"score": 0.0}}}
    r = retention(base, pipe)
    assert r["total"] == {"retention": 50.0, "delta": -25.0}
    assert r["tasks"]["B"] == {"retention": None, "delta": 0.0}


@pytest.mark.parametrize("world", [1, 2, 3, 16])
def test_strided_assignment_covers_every_group_once(world):
    groups = [f"v{i}" for i in range(7)]
    parts = [assign(groups, r, world) for r in range(world)]
    assert sorted(g for p in parts for g in p) == groups
    for r, part in enumerate(parts):
        assert part == groups[r::world]  # rank r takes r, r + W, ...


def test_resume_redoes_nothing_finished(synth, tmp_path):
    m = synth["ovo-bench"]
    first, engines, _ = run_scripted("ovo-bench", m["root"], tmp_path, m["responses"], protocol="incremental")
    log = tmp_path / "preds.rank0.jsonl"
    lines = log.read_text().splitlines()
    assert len(lines) == 20
    # a run killed midway: 8 answers on disk and a torn last line
    log.write_text("\n".join(lines[:8]) + "\n" + lines[8][: len(lines[8]) // 2])
    (tmp_path / "predictions.jsonl").unlink()
    again, engines, _ = run_scripted("ovo-bench", m["root"], tmp_path, m["responses"], protocol="incremental")
    asked = {c.qid for c in engines[0].calls}
    done = {json.loads(x)["qid"] for x in lines[:8]}
    assert asked == set(m["responses"]) - done
    assert again["variants"][0]["scores"] == first["variants"][0]["scores"]
    final = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert sorted(x["qid"] for x in final) == sorted(m["responses"])
