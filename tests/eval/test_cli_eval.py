"""``tokencompress eval`` end to end on the built-in tiny model, and its one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokencompress.cli.eval_command import run
from tokencompress.cli.main import _parser, main

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
PIPES = ROOT / "pipelines"


def eval_cli(model, *argv):
    args = _parser().parse_args(["eval", *map(str, argv), "--no-progress"])
    assert run(args, loaded_model=model) == 0
    out = Path(args.out)
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    return json.loads((out / "results.json").read_text()), preds


def data_arg(synth, bench):
    return synth["rekv"]["annotation"] if bench == "rekv" else synth[bench]["root"]


@pytest.mark.parametrize("protocol", ["reference", "incremental"])
@pytest.mark.parametrize("bench", ["ovo-bench", "streamingbench", "videomme", "mlvu", "egoschema"])
def test_every_benchmark_and_protocol_runs(builtin_model, synth, tmp_path, bench, protocol):
    results, preds = eval_cli(
        builtin_model, PIPES / "stc.yaml", "--benchmark", bench, "--data", synth[bench]["root"], "--protocol", protocol,
        "--fps", "0.25", "--limit", "1", "--max-new-tokens", "2", "--out", tmp_path,
    )  # fmt: skip
    assert [v["name"] for v in results["variants"]] == ["baseline", "stc"]
    assert results["protocol"] == protocol and results["frames"] == {"rule": "rekv_stride", "fps": 0.25}
    assert results["random_weights"] is True and results["versions"]["eval_harness"]
    assert results["machine"]["cpu_capability"] and results["machine"]["threads"] >= 1
    n = results["queries"]
    assert len(preds) == 2 * n and all(p["error"] is None for p in preds)
    stc = results["variants"][1]
    assert (
        stc["speed"]["visual_tokens_per_query"] < results["variants"][0]["speed"]["visual_tokens_per_query"]
    )
    assert {"retention", "delta"} <= set(stc["retention"]["total"])
    assert (tmp_path / "results.md").read_text().startswith("| method |")
    assert (tmp_path / "retention.png").read_bytes()[:4] == b"\x89PNG"


def _by_key(preds):
    return {(p["qid"], p["pipeline"]): p for p in preds}


def test_reference_equals_incremental_for_stateless_pipelines(builtin_model, synth, tmp_path, monkeypatch):
    """P == I on the carphone SSR probes (unsorted, repeated ends 1, 3, 1, 3) with the baseline and
    VisionZip (stateless); and the same comparison catches answers left in the cache."""
    common = ["--benchmark", "ovo-bench", "--data", synth["ovo-bench"]["root"], "--tasks", "SSR"]
    common += ["--fps", "0.5", "--max-new-tokens", "3"]
    _, ref = eval_cli(builtin_model, PIPES / "visionzip.yaml", *common, "--out", tmp_path / "p")
    _, inc = eval_cli(
        builtin_model, PIPES / "visionzip.yaml", *common, "--protocol", "incremental", "--out", tmp_path / "i"
    )
    ref, inc = _by_key(ref), _by_key(inc)
    assert ref.keys() == inc.keys() and len(ref) == 8
    fields = ("response", "frames", "visual_tokens", "cache_tokens")
    for key, p in ref.items():
        assert [p[f] for f in fields] == [inc[key][f] for f in fields], key
    assert [ref[(f"10_{i}", "baseline")]["frames"]["count"] for i in range(4)] == [1, 2, 1, 2]

    from tokencompress.api.target import Target

    monkeypatch.setattr(Target, "rewind", lambda self, state, length, position: None)  # the mistake
    _, leak = eval_cli(
        builtin_model, PIPES / "visionzip.yaml", *common, "--protocol", "incremental", "--out", tmp_path / "l"
    )
    leak = _by_key(leak)
    assert any(ref[k]["cache_tokens"] != leak[k]["cache_tokens"] for k in ref)


def cli_error(capsys, *argv):
    assert main(["eval", *map(str, argv), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_one_line_errors_before_the_model_loads(synth, tmp_path, capsys):
    ovo = synth["ovo-bench"]["root"]
    stc = PIPES / "stc.yaml"
    assert "missing data/ovo_bench_new.json" in cli_error(
        capsys, stc, "--benchmark", "ovo-bench", "--data", tmp_path
    )
    err = cli_error(capsys, stc, "--benchmark", "ovo-bench", "--data", ovo, "--fps", "30")
    assert "--fps 30 is above the source rate 25 fps" in err
    err = cli_error(capsys, stc, "--benchmark", "ovo-bench", "--data", ovo, "--scoring", "stc-ish")
    assert "--scoring stc-ish" in err
    err = cli_error(capsys, stc, "--benchmark", "ovo-bench", "--data", ovo, "--tasks", "NOPE")
    assert "--tasks NOPE: unknown task" in err
    err = cli_error(
        capsys,
        stc,
        "--benchmark",
        "ovo-bench",
        "--data",
        ovo,
        "--protocol",
        "incremental",
        "--frame-rule",
        "uniform_k",
    )
    assert "uniform_k" in err


def test_a_pipeline_the_model_cannot_run(builtin_model, synth, tmp_path):
    from tokencompress.api.errors import TokenCompressError

    bad = tmp_path / "big.yaml"
    bad.write_text(
        "name: big\nstages:\n  pre_prefill:\n    - {strategy: stc_pruner, tokens_per_frame: 500}\n"
    )
    args = _parser().parse_args(
        [
            "eval",
            str(bad),
            "--benchmark",
            "videomme",
            "--data",
            synth["videomme"]["root"],
            "--out",
            str(tmp_path / "o"),
        ]
    )
    with pytest.raises(TokenCompressError, match="tokens_per_frame"):
        run(args, loaded_model=builtin_model)
    assert (
        not (tmp_path / "o" / "preds.rank0.jsonl").exists()
        or not (tmp_path / "o" / "preds.rank0.jsonl").read_text()
    )


def test_eval_escapes_control_characters_in_what_it_echoes(builtin_model, synth, tmp_path, capsys):
    """A pipeline name with terminal controls (ESC, BEL) is echoed as ``\\xNN`` in eval's lines and
    its results table, never raw."""
    pipe = tmp_path / "evil.yaml"
    pipe.write_text((PIPES / "stc.yaml").read_text().replace("name: stc", 'name: "stc\\e[2J\\a"', 1))
    eval_cli(
        builtin_model, pipe, "--benchmark", "videomme", "--data", synth["videomme"]["root"],
        "--fps", "0.25", "--limit", "1", "--max-new-tokens", "2", "--out", tmp_path / "o",
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "stc\\x1b[2J\\x07" in out


DECODER_SIDE = {
    "rekv": {"kv_cache": [{"strategy": "rekv", "n_local": 600, "topk": 2}]},
    "fastv": {"in_decoder": [{"strategy": "fastv", "layer": 1, "ratio": 0.5}]},
    "dycoke_kv": {"kv_cache": [{"strategy": "dycoke_kv", "l": 1, "p": 0.5}]},
}


@pytest.mark.parametrize("protocol", ["reference", "incremental"])
def test_pipelines_that_patch_the_decoder_answer_every_query(builtin_model, synth, tmp_path, protocol):
    """ReKV's own attention, FastV's layer hooks and a decode policy need the pipeline's decoder
    patches during each variant's turn, not only the encoder's: every query is answered."""
    files = []
    for name, stages in DECODER_SIDE.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(json.dumps({"name": name, "stream": {"frames_per_chunk": 1}, "stages": stages}))
        files.append(path)
    results, preds = eval_cli(
        builtin_model, *files, "--benchmark", "ovo-bench", "--data", synth["ovo-bench"]["root"],
        "--protocol", protocol, "--fps", "0.5", "--limit", "2", "--max-new-tokens", "2", "--out", tmp_path / "o",
    )  # fmt: skip
    assert [v["name"] for v in results["variants"]] == ["baseline", *DECODER_SIDE]
    assert len(preds) == 4 * results["queries"] and [p["error"] for p in preds if p["error"]] == []
