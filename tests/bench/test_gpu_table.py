"""benchmarks/gpu_table.py runs without CUDA (it says so and times with perf_counter) and writes the
JSON fields a reader needs to know which GPU and host a table holds for; timings are not checked."""

from __future__ import annotations

import importlib.util
import json
import sys

from tests.support.paths import ROOT


def test_gpu_table_runs_on_cpu_and_records_the_machine(tmp_path, capsys) -> None:
    spec = importlib.util.spec_from_file_location("gpu_table", ROOT / "benchmarks" / "gpu_table.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_table"] = module
    try:
        spec.loader.exec_module(module)
        out_path = tmp_path / "gpu.json"
        argv = ["--model", "builtin", "--frames", "2", "--repeats", "1", "--warmup", "0", "--device", "cpu"]
        module.main([*argv, "--only", "vit,prefill_pruner,overhead_evs", "--out", str(out_path)])
    finally:
        sys.modules.pop("gpu_table", None)
    assert "no CUDA: timing on CPU with perf_counter" in capsys.readouterr().out
    data = json.loads(out_path.read_text())
    m = data["machine"]
    assert m["timing"] == "no CUDA: timing on CPU with perf_counter" and m["gpu"] is None
    for key in ("cpu_capability", "torch", "cuda", "mkldnn", "logical_cores", "threads", "cpu"):
        assert key in m
    assert (data["frames"], data["repeats"], data["warmup"]) == (2, 1, 0)
    assert set(data["vit"]) >= {"vit_all", "vit_reference", "vit_non_reference", "seconds"}
    assert set(data["prefill_pruner"]) >= {
        "pruner_plus_prefill_over_prefill",
        "pruner_share_of_pruned_prefill",
    }
    assert set(data["overhead_evs"]) >= {"chunk_time_over_baseline", "token_stages_share_of_prefill"}
    for row in ("vit", "prefill_pruner", "overhead_evs"):
        spread = next(v for v in data[row].values() if isinstance(v, dict))
        assert set(spread) == {"median", "min", "max", "runs"} and len(spread["runs"]) == 1
