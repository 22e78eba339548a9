"""benchmarks/perf_table.py: rows with changed parameters, and the targets table read off results."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from tests.support.paths import ROOT


@pytest.fixture(scope="module")
def perf_table():
    spec = importlib.util.spec_from_file_location("perf_table", ROOT / "benchmarks" / "perf_table.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["perf_table"] = module  # dataclasses resolve annotations through sys.modules
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("perf_table", None)


def test_a_row_sets_its_parameters_only_where_a_strategy_has_them(perf_table) -> None:
    row = perf_table.Row("r", "stc", "label", {"update_token_ratio": 0.1, "tokens_per_frame": 30})
    pipe = perf_table.load_row(row)
    params = {type(s.params).__name__: s.params for steps in pipe.config.stages.values() for s in steps}
    assert params["StcCacherParams"].update_token_ratio == 0.1
    assert params["StcPrunerParams"].tokens_per_frame == 30
    assert pipe.name == "r"


def _spread(median: float, lo: float, hi: float) -> dict:
    return {"median": median, "min": lo, "max": hi}


def test_targets_table_marks_each_figure_against_its_target(perf_table) -> None:
    results = {
        "stc_cacher": {
            "spreads": {
                "vit_ms": _spread(0.66, 0.6, 0.7),
                "vit_ms_reference": _spread(1.02, 1.0, 1.05),
                "vit_ms_non_reference": _spread(0.3, 0.29, 0.31),
            },
            "ratios": {"vit_gflops": 0.657},
            "flop_ratios": {"vit_gflops_non_reference": 0.313},
        },
        "stc_pruner": {"spreads": {"stage_share_of_prefill": _spread(0.0099, 0.0096, 0.0102)}},
    }
    prefill = [
        {
            "prefill_chunks": 4,
            "decoder_kernels": "stock",
            "repeats": 3,
            "threads": 2,
            "load_average": [1.0, 2.0],
            "lengths": {
                "4": {
                    "pruner_plus_prefill_over_prefill": _spread(0.36, 0.35, 0.38),
                    "pruner_share_of_pruned_prefill": _spread(0.007, 0.006, 0.009),
                    "flop_ratio": 0.294,
                }
            },
        }
    ]
    lines = perf_table.targets_table(results, prefill).splitlines()
    row = {line.split(" | ")[0].lstrip("| "): line for line in lines if line.startswith("| ")}
    assert row["Cacher 0.25 / int 2, ViT time"].endswith("| 0.660 [0.600–0.700] | 0.657 | ≤ 0.67 | yes |")
    assert row["reference chunks vs plain tower"].endswith("| 1.000 | ≤ 1.01 | no |")
    assert row["Cacher 0.10 / int 4, ViT time"].endswith("| not run | – | ≤ 0.42 | – |")
    grouped = row["Pruner 60/196 + prefill, 4 chunks, `prefill_chunks: 4`"]
    assert grouped.endswith("| 0.360 [0.350–0.380] | 0.294 | ≤ 0.37 | yes |")
    share = row["pruner time / pruned prefill, 4 chunks, `prefill_chunks: 4`"]
    assert share.endswith("| 0.70 % [0.60–0.90] | 0 % | ≤ 0.8 % | yes |")
    assert row["pruner time / pruned prefill, `stc_pruner` row above"].endswith(
        "| 0.99 % [0.96–1.02] | 0 % | ≤ 0.8 % | no |"
    )
    assert "16 chunks" in " ".join(row) and "`prefill_chunks: 4`: 3 interleaved repeats" in lines[-1]


def test_machine_json_and_caption_name_the_isa(perf_table) -> None:
    m = perf_table.machine()
    assert m["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert {"mkldnn", "mkl", "logical_cores", "threads", "cpus", "threads_used", "torch"} <= set(m)
    meta = {"repeats": 1, "frames": 2, "video": "v.mp4", "fps": 1.0, "model": "m", "machine": m}
    assert f"torch CPU capability {m['cpu_capability']}" in perf_table.table([], meta)
