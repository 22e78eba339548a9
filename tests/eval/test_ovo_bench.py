"""OVO-Bench on its synthetic set: chunk files, frames fed, prompts, scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokencompress.api.errors import TokenCompressError
from tokencompress.eval.loaders import load_benchmark
from tokencompress.eval.loading import LoadOptions
from tokencompress.eval.video_source import probe_times

from .helpers import run_scripted


def test_twenty_chunk_files_with_the_cut_rule(synth):
    m = synth["ovo-bench"]
    folder = Path(m["root"]) / "data" / "chunked_videos"
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{k}.mp4" for k in m["clip_frames"])
    assert len(m["clip_frames"]) == 20
    for name, frames in m["clip_frames"].items():
        times, fps, duration = probe_times(str(folder / f"{name}.mp4"))
        src_fps = 30000 / 1001 if name.split("_")[0] in ("2", "6", "10") else 25
        assert len(times) == frames, name
        assert abs(fps - src_fps) < 1e-6, name
        assert abs(duration - frames / src_fps) <= 1 / src_fps + 1e-6, name


def test_loader_windows_and_clip_names(synth):
    m = synth["ovo-bench"]
    loaded = load_benchmark("ovo-bench", Path(m["root"]), LoadOptions())
    by = {q.qid: q for q in loaded.queries}
    assert set(by) == set(m["responses"])
    assert by["5"].window == (0.0, 10.0)  # 12.5 s clamped to the video
    assert by["6"].window == (0.0, 4.0)  # ceil(4.0) = 4 < 4.004
    assert by["0"].window == (0.0, 4.0)  # ceil(3.2)
    assert [by[f"10_{i}"].window[1] for i in range(4)] == [1, 3, 1, 3]  # unsorted probes keep their index
    assert Path(by["10_1"].clip).name == "10_1.mp4"
    assert "&index=1.mp4" in by["3"].video  # opaque path, not URL-encoded
    assert by["2"].gt == 0 and by["7"].gt == 4


@pytest.mark.parametrize("fps", [1.0, 0.5])
@pytest.mark.parametrize("protocol", ["reference", "incremental"])
def test_frames_fed_per_call(synth, tmp_path, fps, protocol):
    m = synth["ovo-bench"]
    res, engines, loaded = run_scripted("ovo-bench", m["root"], tmp_path, m["responses"], protocol, fps)
    calls = engines[0].calls
    assert {c.qid: c.frames for c in calls} == m["frames"][fps]
    ends = {q.qid: q.window[1] for q in loaded.queries}
    assert all(c.last_time < ends[c.qid] for c in calls)  # no future frame beyond the cut


def test_official_scores_and_totals(synth, tmp_path):
    m = synth["ovo-bench"]
    res, _, _ = run_scripted("ovo-bench", m["root"], tmp_path, m["responses"])
    s = res["variants"][0]["scores"]
    tasks = {t: round(v["score"], 2) for t, v in s["tasks"].items()}
    assert tasks == {
        "EPM": 100, "HLD": 0, "ASI": 100, "STU": 100, "OJR": 0, "ATR": 0, "ACR": 100, "OCR": 100, "FPD": 0,
        "REC": 66.67, "SSR": 75.0, "CRR": 50.0,
    }  # fmt: skip
    cats = {c: round(v["score"], 2) for c, v in s["categories"].items()}
    assert cats == {
        "Backward Tracing": 66.67,
        "Real-Time Visual Perception": 50.0,
        "Forward Active Responding": 63.89,
    }
    assert round(s["total"], 2) == 60.19 and round(s["total_v1"], 2) == 57.64
    lines = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 20 and {x["qid"] for x in lines} == set(m["responses"])
    assert next(x for x in lines if x["qid"] == "4")["error"]  # the scripted inference error is recorded


def test_lmms_and_strict_modes(synth, tmp_path):
    m = synth["ovo-bench"]
    res, _, _ = run_scripted("ovo-bench", m["root"], tmp_path / "l", m["responses"], scoring="lmms")
    s = res["variants"][0]["scores"]
    assert round(s["tasks"]["CRR"]["score"], 2) == 66.67
    assert round(s["categories"]["Forward Active Responding"]["score"], 2) == 69.44
    res, _, _ = run_scripted("ovo-bench", m["root"], tmp_path / "s", m["responses"], scoring="strict")
    assert res["variants"][0]["scores"]["tasks"]["ASI"]["score"] == 0


def test_prompt_structure(synth):
    m = synth["ovo-bench"]
    by = {q.qid: q for q in load_benchmark("ovo-bench", Path(m["root"]), LoadOptions()).queries}
    p = by["0"].prompt
    assert p.startswith("\n") and p.endswith("\n")
    assert "\nA. a bus; B. a dog; C. a cyclist in red; D. a tram;\n" in p  # one line, "; " joined, final ";"
    assert any(line.endswith(" ") for line in p.split("\n"))  # the first instruction line keeps its space
    assert "E. stop;" in by["7"].prompt and "B. slow; down;" in by["7"].prompt
    assert "A. A baker man arrives; B. he wakes up;" in by["8"].prompt
    assert "“Yes” or “No”" in by["10_0"].prompt and "lift the phone" in by["10_0"].prompt
    assert "How many times did they ride past the camera?" in by["9_0"].prompt


def test_user_prompts_file_replaces_a_template(synth, tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text('ovo-bench:\n  mc: "Q: {question} | {options}"\n')
    from tokencompress.eval.prompts import load_prompts

    m = synth["ovo-bench"]
    by = {
        q.qid: q
        for q in load_benchmark("ovo-bench", Path(m["root"]), LoadOptions(prompts=load_prompts(f))).queries
    }
    assert (
        by["0"].prompt
        == "Q: What passed the camera first? | A. a bus; B. a dog; C. a cyclist in red; D. a tram;"
    )
    f.write_text('ovo-bench:\n  nope: "x"\n')
    with pytest.raises(TokenCompressError, match="unknown key ovo-bench.nope"):
        load_prompts(f)


def test_bad_layout_and_records(synth, tmp_path):
    with pytest.raises(TokenCompressError, match="missing data/ovo_bench_new.json"):
        load_benchmark("ovo-bench", tmp_path, LoadOptions())
    root = Path(synth["ovo-bench"]["root"])
    bad = tmp_path / "bad"
    (bad / "data").mkdir(parents=True)
    (bad / "data" / "src_videos").symlink_to(root / "data" / "src_videos")
    records = json.loads((root / "data" / "ovo_bench_new.json").read_text())
    del records[0]["gt"]
    records[1]["task"] = "XYZ"
    (bad / "data" / "ovo_bench_new.json").write_text(json.dumps(records))
    loaded = load_benchmark("ovo-bench", bad, LoadOptions())
    assert loaded.skipped == {"missing field 'gt'": 1, "unknown task 'XYZ'": 1}
    assert len(loaded.queries) == 18
    with pytest.raises(TokenCompressError, match="unknown task 'XYZ'"):
        load_benchmark("ovo-bench", bad, LoadOptions(strict=True))
    records[2]["video"] = "COIN/absent.mp4"
    (bad / "data" / "ovo_bench_new.json").write_text(json.dumps(records))
    with pytest.raises(TokenCompressError, match="video not found: .*absent.mp4"):
        load_benchmark("ovo-bench", bad, LoadOptions())
