"""Two CPU ranks under torchrun (gloo) give the single-process predictions and results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .test_cli_eval import PIPES, eval_cli

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
VOLATILE = ("rank", "timings")


def _strip(preds):
    return sorted(
        ({k: v for k, v in p.items() if k not in VOLATILE} for p in preds),
        key=lambda p: (p["qid"], p["pipeline"]),
    )


def test_two_ranks_equal_one(builtin_model, synth, tmp_path):
    args = [str(PIPES / "stc.yaml"), "--benchmark", "ovo-bench", "--data", synth["ovo-bench"]["root"]]
    args += ["--tasks", "EPM", "ASI", "OJR", "ACR", "--fps", "0.25", "--max-new-tokens", "2", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "tokencompress", "eval", *args, "--out", str(tmp_path / "w2")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("| method |") == 1  # one result, written by rank 0

    single, preds1 = eval_cli(builtin_model, *args, "--out", tmp_path / "w1")
    preds2 = [json.loads(x) for x in (tmp_path / "w2" / "predictions.jsonl").read_text().splitlines()]
    assert _strip(preds2) == _strip(preds1)
    assert len({(p["qid"], p["pipeline"]) for p in preds2}) == len(preds2) == 8
    sharded = json.loads((tmp_path / "w2" / "results.json").read_text())
    assert sharded["ranks"] == 2
    assert [v["scores"] for v in sharded["variants"]] == [v["scores"] for v in single["variants"]]
    # strided over the sorted video paths (COIN/, Ego4D/, YouTube_Games/): rank 0 takes the 1st and
    # 3rd (carphone, bunny), rank 1 the 2nd (bikes)
    by_rank = {p["qid"]: p["rank"] for p in preds2}
    assert by_rank == {"2": 0, "6": 0, "4": 0, "0": 1}
