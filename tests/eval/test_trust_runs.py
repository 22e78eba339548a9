"""Hostile flags and prediction logs: out-of-range --fps/--num-frames, --out a file, corrupt logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokencompress.api.errors import TokenCompressError
from tokencompress.cli.main import main
from tokencompress.eval.sampling import FrameRule
from tokencompress.models import loading as models

from .helpers import run_scripted

PIPE = Path(__file__).resolve().parents[2] / "pipelines" / "stc.yaml"


def no_model(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the flags were checked")

    monkeypatch.setattr(models, "load_model", refuse)


def eval_error(capsys, synth, *argv):
    code = main(["eval", str(PIPE), "--benchmark", "ovo-bench", "--data", synth["ovo-bench"]["root"], *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err, (code, err)
    return err.removeprefix("error: ")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--fps", "5000", "--frame-rule", "time_slots"],
            "--fps must be between 0.0001 and 1000, got 5000",
        ),
        (["--fps", "1e-5"], "--fps must be between 0.0001 and 1000, got 1e-05"),
        (
            ["--num-frames", "0", "--frame-rule", "uniform_k"],
            "--num-frames must be between 1 and 1024, got 0",
        ),
        (["--num-frames", "-3"], "--num-frames must be between 1 and 1024, got -3"),
        (["--num-frames", "1000000000", "--frame-rule", "uniform_k"], "between 1 and 1024, got 1000000000"),
    ],
)
def test_flags_out_of_range_are_one_line(synth, tmp_path, capsys, monkeypatch, flags, message):
    no_model(monkeypatch)
    assert message in eval_error(capsys, synth, *flags, "--out", str(tmp_path / "o"))


def test_frame_rule_bounds():
    for fps in (1e308, 1e-320, 5000.0):
        with pytest.raises(TokenCompressError, match="--fps must be between"):
            FrameRule("time_slots", fps)
    with pytest.raises(TokenCompressError, match="--num-frames must be between 1 and 1024"):
        FrameRule("uniform_k", 1.0, 10**9)
    assert FrameRule("uniform_k", 1.0, 1024).k == 1024


def test_out_a_file_is_refused_before_the_model_loads(synth, tmp_path, capsys, monkeypatch):
    no_model(monkeypatch)
    out = tmp_path / "results"
    out.write_text("not a folder")
    err = eval_error(capsys, synth, "--out", str(out))
    assert err == f"--out {out}: is a file, not a folder; give a folder for the results"


def _lines(out):
    return (out / "preds.rank0.jsonl").read_bytes().split(b"\n")


def test_corrupt_log_lines_are_skipped_named_and_answered_again(synth, tmp_path):
    m = synth["ovo-bench"]
    first, _, _ = run_scripted("ovo-bench", m["root"], tmp_path, m["responses"])
    lines = _lines(tmp_path)
    recs = [json.loads(x) for x in lines if x]
    assert len(recs) == 20
    broken = {3: b"\xff\xfe not utf-8", 5: b"[1, 2, 3]", 9: b'{"half": '}
    missing = dict(recs[6])
    del missing["pipeline_key"]
    wrong = dict(recs[7], qid=["not", "a", "string"])
    for n, raw in broken.items():
        lines[n - 1] = raw
    lines[6] = json.dumps(missing).encode()
    lines[7] = json.dumps(wrong).encode()
    (tmp_path / "preds.rank0.jsonl").write_bytes(b"\n".join(lines))
    with pytest.warns(
        RuntimeWarning, match=r"preds\.rank0\.jsonl: skipped 5 unreadable line\(s\) \(3, 5, 7, 8, 9\)"
    ):
        again, engines, _ = run_scripted("ovo-bench", m["root"], tmp_path, m["responses"])
    redo = {recs[n - 1]["qid"] for n in (3, 5, 7, 8, 9)}
    assert sorted(c.qid for c in engines[0].calls) == sorted(redo)
    assert again["variants"][0]["scores"] == first["variants"][0]["scores"]
    assert "skipped 5 unreadable line(s)" in again["log_warnings"][0]
    final = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert sorted(x["qid"] for x in final) == sorted(m["responses"])


def test_a_torn_last_line_never_swallows_the_next_answer(synth, tmp_path):
    m = synth["ovo-bench"]
    run_scripted("ovo-bench", m["root"], tmp_path, m["responses"], protocol="incremental")
    lines = (tmp_path / "preds.rank0.jsonl").read_text().splitlines()
    # killed while writing the ninth answer: no newline after the torn part
    (tmp_path / "preds.rank0.jsonl").write_text("\n".join(lines[:8]) + "\n" + lines[8][: len(lines[8]) // 2])
    with pytest.warns(RuntimeWarning, match=r"unreadable line\(s\) \(9\)"):
        run_scripted("ovo-bench", m["root"], tmp_path, m["responses"], protocol="incremental")
    # a third run finds every answer on disk, each once: nothing was glued onto the torn line
    with pytest.warns(RuntimeWarning, match=r"unreadable line\(s\) \(9\)"):  # the torn part stays, named
        third, engines, _ = run_scripted(
            "ovo-bench", m["root"], tmp_path, m["responses"], protocol="incremental"
        )
    assert engines[0].calls == []
    good = []
    for raw in (tmp_path / "preds.rank0.jsonl").read_text().splitlines():
        try:
            good.append(json.loads(raw)["qid"])
        except json.JSONDecodeError:
            continue
    assert sorted(good) == sorted(m["responses"])  # no answer lost, none duplicated
    assert third["queries"] == 20
