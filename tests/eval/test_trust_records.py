"""Hostile annotations: paths out of --data, impossible times, too many options, deep nesting."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tokencompress.api.errors import TokenCompressError
from tokencompress.eval.guards import skip_summary
from tokencompress.eval.loaders import load_benchmark
from tokencompress.eval.loading import LoadOptions
from tokencompress.eval.prompts import load_prompts

from .helpers import run_scripted

ANNOTATION = Path("data") / "ovo_bench_new.json"


def ovo_variant(synth, tmp_path, mutate, name="v"):
    """A copy of the synthetic OVO set whose annotation ``mutate`` edits (it gets the records and
    may return the JSON text to write instead)."""
    root = Path(synth["ovo-bench"]["root"])
    bad = tmp_path / name
    (bad / "data").mkdir(parents=True)
    shutil.copytree(root / "data" / "src_videos", bad / "data" / "src_videos")
    records = json.loads((root / ANNOTATION).read_text())
    text = mutate(records)
    (bad / ANNOTATION).write_text(text if isinstance(text, str) else json.dumps(records))
    return bad


def secret_video(tmp_path, synth):
    """A real video outside every --data: what a hostile annotation points at."""
    secret = tmp_path / "secret" / "rel.mp4"
    secret.parent.mkdir(parents=True)
    src = Path(synth["ovo-bench"]["root"]) / "data" / "src_videos" / "Ego4D" / "clips" / "synth-bikes.mp4"
    shutil.copyfile(src, secret)
    return secret


def test_ovo_video_paths_outside_data_are_refused(synth, tmp_path):
    secret = secret_video(tmp_path, synth)

    def mutate(records):
        records[0]["video"] = "../../../secret/rel.mp4"
        records[1]["video"] = str(secret)
        records[2]["video"] = "COIN/link.mp4"

    bad = ovo_variant(synth, tmp_path, mutate)
    (bad / "data" / "src_videos" / "COIN").mkdir(exist_ok=True)
    (bad / "data" / "src_videos" / "COIN" / "link.mp4").symlink_to(secret)  # a link out of --data
    loaded = load_benchmark("ovo-bench", bad, LoadOptions())
    assert sum(loaded.skipped.values()) == 3 and len(loaded.queries) == 17
    assert all("leads outside" in reason for reason in loaded.skipped)
    assert sorted(w for ids in loaded.skipped_ids.values() for w in ids) == [
        "record id 0",
        "record id 1",
        "record id 2",
    ]
    assert not any(str(secret) in q.video or "secret" in q.video for q in loaded.queries)
    with pytest.raises(TokenCompressError, match=r"record id 0: video path '\.\./\.\./\.\./secret/rel\.mp4'"):
        load_benchmark("ovo-bench", bad, LoadOptions(strict=True))
    # nothing outside is decoded or answered, and the results say what was skipped
    results, engines, _ = run_scripted("ovo-bench", bad, tmp_path / "out", synth["ovo-bench"]["responses"])
    assert {c.qid for c in engines[0].calls}.isdisjoint({"0", "1", "2"})
    assert sum(results["skipped"].values()) == 3 and "record id 1" in str(results["skipped_ids"])


def test_a_video_folder_linked_to_another_disk_still_works(synth, tmp_path):
    root = Path(synth["ovo-bench"]["root"])
    linked = tmp_path / "linked"
    (linked / "data").mkdir(parents=True)
    (linked / "data" / "src_videos").symlink_to(root / "data" / "src_videos")
    shutil.copyfile(root / ANNOTATION, linked / ANNOTATION)
    assert len(load_benchmark("ovo-bench", linked, LoadOptions()).queries) == 20


def test_streamingbench_and_offline_paths_outside_data(synth, tmp_path):
    secret = secret_video(tmp_path, synth)
    sb = tmp_path / "sb"
    shutil.copytree(synth["streamingbench"]["root"], sb)
    real = sb / "src" / "data" / "questions_real.json"
    entries = json.loads(real.read_text())
    entries[0]["video_path"] = "../../../secret/rel.mp4"
    entries[1]["video_path"] = str(secret)
    real.write_text(json.dumps(entries))
    loaded = load_benchmark("streamingbench", sb, LoadOptions())
    assert sorted(w for ids in loaded.skipped_ids.values() for w in ids) == ["real:0", "real:1"]
    assert not any("secret" in q.video for q in loaded.queries)

    mlvu = tmp_path / "mlvu"
    shutil.copytree(synth["mlvu"]["root"], mlvu)
    rows = json.loads((mlvu / "mlvu" / "dev.json").read_text())
    rows[0]["video_name"] = "../../secret/rel.mp4"
    (mlvu / "mlvu" / "dev.json").write_text(json.dumps(rows))
    loaded = load_benchmark("mlvu", mlvu, LoadOptions())
    assert loaded.skipped_ids == {next(iter(loaded.skipped)): ["row 0"]} and len(loaded.queries) == 3

    rekv = tmp_path / "rekv"
    shutil.copytree(synth["rekv"]["root"], rekv)
    anno = json.loads((rekv / "rekv.json").read_text())
    anno[0]["video_path"] = str(secret)  # absolute, outside the annotation's folder
    (rekv / "rekv.json").write_text(json.dumps(anno))
    loaded = load_benchmark("mlvu", rekv / "rekv.json", LoadOptions())
    assert not loaded.queries and list(loaded.skipped_ids.values()) == [["video 0"]]


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        ('"realtime": -5', "realtime -5 is out of range"),
        ('"realtime": 0', "realtime 0 is out of range"),
        ('"realtime": NaN', "realtime nan is not a finite number"),
        ('"realtime": Infinity', "realtime inf is not a finite number"),
        ('"realtime": -Infinity', "realtime -inf is not a finite number"),
        ('"realtime": true', "field 'realtime' has type bool"),
    ],
)
def test_ovo_bad_times_are_skipped_and_counted(synth, tmp_path, edit, reason):
    bad = ovo_variant(synth, tmp_path, lambda r: json.dumps(r).replace('"realtime": 3.2', edit))
    loaded = load_benchmark("ovo-bench", bad, LoadOptions())
    assert len(loaded.queries) == 19 and "0" not in {q.qid for q in loaded.queries}
    (got,) = loaded.skipped
    assert got.startswith(reason) and loaded.skipped_ids == {got: ["record id 0"]}
    with pytest.raises(TokenCompressError, match=f"record id 0: {reason}.*drop --strict"):
        load_benchmark("ovo-bench", bad, LoadOptions(strict=True))


def test_ovo_forward_probe_with_a_nan_time(synth, tmp_path):
    bad = ovo_variant(
        synth,
        tmp_path,
        lambda r: json.dumps(r).replace('{"realtime": 3, "count"', '{"realtime": NaN, "count"'),
    )
    loaded = load_benchmark("ovo-bench", bad, LoadOptions())
    assert loaded.skipped == {"test_info[0].realtime nan is not a finite number": 1}
    assert not any(q.qid.startswith("9_") for q in loaded.queries)


def test_ovo_too_many_options_and_deep_fields(synth, tmp_path):
    def mutate(records):
        records[0]["options"] = [f"o{i}" for i in range(11)]
        records[2]["options"] = [json.loads("[" * 20 + "]" * 20)] * 2  # deep, but inside the file bound
        records[2]["gt"] = 0

    loaded = load_benchmark("ovo-bench", ovo_variant(synth, tmp_path, mutate), LoadOptions())
    assert loaded.skipped == {
        "11 options; at most 10 (A-J)": 1,
        "field 'options' is nested more than 16 levels deep": 1,
    }
    assert loaded.skipped_ids["11 options; at most 10 (A-J)"] == ["record id 0"]
    text = skip_summary(loaded.skipped, loaded.skipped_ids)
    assert text.startswith("2: ") and "record id 0" in text and "record id 2" in text


@pytest.mark.parametrize("levels", [500, 100_000])
def test_annotation_nested_too_deep_is_one_line(synth, tmp_path, levels):
    def mutate(records):
        return json.dumps(records)[:-1] + ", " + "[" * levels + "]" * levels + "]"

    bad = ovo_variant(synth, tmp_path, mutate)
    with pytest.raises(TokenCompressError, match=r"ovo_bench_new\.json: nested more than 64 levels deep"):
        load_benchmark("ovo-bench", bad, LoadOptions())


def test_streamingbench_negative_and_zero_times(synth, tmp_path):
    sb = tmp_path / "sb"
    shutil.copytree(synth["streamingbench"]["root"], sb)
    real = sb / "src" / "data" / "questions_real.json"
    entries = json.loads(real.read_text())
    entries[0]["questions"][0]["time_stamp"] = "00:-5"
    entries[0]["questions"][1]["time_stamp"] = "00:00:00"
    real.write_text(json.dumps(entries))
    loaded = load_benchmark("streamingbench", sb, LoadOptions())
    assert loaded.skipped_ids == {
        "time_stamp '00:-5' is negative": ["real:0:0"],
        "time_stamp '00:00:00' leaves no video before the question": ["real:0:1"],
    }


def test_offline_too_many_options(synth, tmp_path):
    ego = tmp_path / "ego"
    shutil.copytree(synth["egoschema"]["root"], ego)
    rows = json.loads((ego / "egoschema" / "subset.json").read_text())
    rows[0]["option"] = [f"{i}" for i in range(9)]
    (ego / "egoschema" / "subset.json").write_text(json.dumps(rows))
    loaded = load_benchmark("egoschema", ego, LoadOptions())
    assert loaded.skipped_ids == {"9 options; at most 8 (A-H)": ["row 0"]}


def test_prompts_nested_too_deep(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("ovo-bench: " + "[" * 500 + "]" * 500 + "\n")
    with pytest.raises(TokenCompressError, match=r"--prompts .*p\.yaml: .*nested more than 64 levels deep"):
        load_prompts(f)
    f.write_text("ovo-bench:\n" + "".join("  " * i + "a:\n" for i in range(1, 400)))
    with pytest.raises(TokenCompressError, match="nested more than 64 levels deep"):
        load_prompts(f)
    f.write_bytes(b"ovo-bench:\n  mc: '\xff'\n")
    with pytest.raises(TokenCompressError, match="not UTF-8"):
        load_prompts(f)
