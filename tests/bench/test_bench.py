"""Benchmark harness on a tiny LLaVA-OV: counts and FLOPs are checked exactly, wall time never
is (docs/design.md §9), because it depends on whatever else the machine is doing."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch
import yaml

from tests.support.models import build_tiny_llava_ov, random_frames
from tests.support.pipelines import STC
from tokencompress import Pipeline
from tokencompress.bench import RATIOS, BenchResult, format_table, run_benchmark, write_plot
from tokencompress.cli.main import main
from tokencompress.strategies.stc_cacher import layer_macs, n_update

pytestmark = pytest.mark.slow

FRAMES = 4
QUESTION = [21, 22, 23]


@pytest.fixture(scope="module")
def model():
    return build_tiny_llava_ov()


@pytest.fixture(scope="module")
def result(model) -> BenchResult:
    pipe = Pipeline.from_dict({"name": "stc", "stream": {"frames_per_chunk": 1}, "stages": STC})
    return run_benchmark(pipe, model, random_frames(FRAMES), QUESTION, repeats=2, warmup=1, progress=False)


def vit_geometry(model) -> tuple[int, int, int, int, int]:
    v = model.config.vision_config
    tokens = (v.image_size // v.patch_size) ** 2
    return tokens, v.hidden_size, v.intermediate_size, v.num_hidden_layers, 3 * v.patch_size**2


def test_sections_and_shapes(result):
    d = result.as_dict()
    assert {"baseline", "pipeline", "ratios", "notes"} <= set(d)
    assert d["baseline"]["name"] == "baseline" and d["pipeline"]["name"] == "stc"
    assert d["baseline"]["config"]["stages"] == {} and d["pipeline"]["config"]["stages"]
    for side in (result.baseline, result.pipeline):
        assert len(side.chunks) == FRAMES
        assert len(side.e2e_ms_runs) == 2 and len(side.ttft_ms_runs) == 2
        assert all(c["vit_ms"] > 0 and c["prefill_ms"] > 0 for c in side.chunks)
    assert set(result.ratios) == {key for key, _ in RATIOS}


def test_token_and_kv_ratios_are_exact(result):
    ratios = result.ratios
    assert ratios["llm_visual_tokens"] == 6 / 16
    # No tokenizer, so no chat prefix: the cache holds visual tokens only.
    assert ratios["kv_tokens"] == 6 / 16
    assert ratios["kv_bytes"] == 6 / 16
    assert result.pipeline.tokens["pre_prefill"] == [16 * FRAMES, 6 * FRAMES]
    assert result.baseline.tokens["vit"] == result.pipeline.tokens["vit"] == 64 * FRAMES
    assert result.pipeline.kv_visual_tokens == result.pipeline.kv_tokens == 6 * FRAMES


def test_flops_shrink(result):
    assert result.ratios["vit_gflops"] < 1
    assert result.ratios["prefill_gflops"] < 1


def test_baseline_vit_flops_match_analytic_count(model, result):
    """FLOPs = 2 x MACs; per layer 4·T·C² + 2·T²·C + 2·T·C·M, plus the patch embedding. The
    attention term only shows up because bench registers a formula for CPU SDPA."""
    t, c, m, layers, patch = vit_geometry(model)
    analytic = 2 * (layers * (4 * t * c * c + 2 * t * t * c + 2 * t * c * m) + t * patch * c)
    for chunk in result.baseline.chunks:
        assert chunk["vit_flops"] == pytest.approx(analytic, rel=0.03)


def test_cacher_saves_what_it_claims(model, result):
    """Reference chunks (0, 2) cost a full frame; the others the Cacher's own K-once count."""
    t, c, m, layers, patch = vit_geometry(model)
    macs = layer_macs(t, c, m, n_update(t, 0.25))
    full, sparse = (2 * (layers * x + t * patch * c) for x in (macs.full, macs.non_reference))
    got = [chunk["vit_flops"] for chunk in result.pipeline.chunks]
    assert got == pytest.approx([full, sparse, full, sparse], rel=0.03)


def test_json_round_trip(result):
    d = result.as_dict()
    assert json.loads(json.dumps(d)) == d


def test_table_lists_every_ratio(result):
    table = format_table(result)
    for label in (
        "ViT ms",
        "ViT GFLOPs",
        "prefill ms",
        "prefill GFLOPs",
        "time to first token",
        "KV cache tokens",
    ):
        assert label in table


def test_json_and_report_name_the_machine_kind(result):
    machine = result.as_dict()["machine"]
    assert machine["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert {"mkldnn", "mkl", "cpu", "logical_cores", "threads", "torch"} <= set(machine)
    assert machine["threads"] == result.threads
    assert f"machine: torch CPU capability {machine['cpu_capability']}" in format_table(result)
    # the Cacher's fast_reference: auto calibrated once (one shape) and the report says what it chose
    (note,) = [n for n in result.notes if n.startswith("stc_cacher: calibrated")]
    assert "stc_cacher.reference_layer" in note and ("fast path" in note or "stock path" in note)


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib not installed")
def test_plot_written(result, tmp_path):
    path = write_plot(result, tmp_path / "stc.png")
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_skipped_without_matplotlib(result, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes the import fail
    assert write_plot(result, tmp_path / "stc.png") is None
    assert not (tmp_path / "stc.png").exists()


def test_cli_bench(model, tmp_path, capsys):
    from tokencompress.models.tokenizer import byte_tokenizer

    model_dir = tmp_path / "tiny"
    model.save_pretrained(model_dir)
    byte_tokenizer("llava_onevision").save_pretrained(model_dir)
    config = tmp_path / "stc_tiny.yaml"
    config.write_text(
        yaml.safe_dump({"name": "stc tiny", "stream": {"frames_per_chunk": 1, "fps": 0.5}, "stages": STC})
    )
    out = tmp_path / "out"
    argv = [
        "bench",
        str(config),
        "--model",
        str(model_dir),
        "--frames",
        "2",
        "--repeats",
        "1",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "ratio" in printed and "LLM visual tokens" in printed
    saved = json.loads((out / "stc_tiny.json").read_text())
    assert saved["frames"] == 2 and saved["ratios"]["llm_visual_tokens"] == 6 / 16
    assert saved["pipeline"]["summary"]["chunks"] == 2
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "stc_tiny.png").is_file()


def test_cli_bench_errors_are_one_line(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(
        yaml.safe_dump(
            {"name": "bad", "stages": {"pre_prefill": [{"strategy": "stc_pruner", "tokens_per_frame": 0}]}}
        )
    )
    assert main(["bench", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err


def test_rejects_bad_frames(model):
    from tokencompress.api.errors import TokenCompressError

    pipe = Pipeline.from_dict({"name": "p", "stages": {}})
    with pytest.raises(TokenCompressError, match="uint8"):
        run_benchmark(pipe, model, torch.zeros(2, 8, 8, 3).numpy(), QUESTION, progress=False)
    with pytest.raises(TokenCompressError, match="tokenizer"):
        run_benchmark(pipe, model, random_frames(1), "text needs a tokenizer", progress=False)


def test_per_repeat_figures_and_chunk_kinds(model, result):
    """Cacher chunks 0, 2 are reference chunks; every per-repeat figure has one ratio per repeat."""
    assert result.pipeline.chunk_kinds == ["reference", "non_reference"] * 2
    assert result.baseline.chunk_kinds == ["all"] * FRAMES
    for key in ("vit_ms", "vit_ms_reference", "vit_ms_non_reference", "prefill_ms", "e2e_ms_per_chunk"):
        s = result.spreads[key]
        assert len(s["runs"]) == 2 and s["min"] <= s["median"] <= s["max"]
    t, c, m, layers, patch = vit_geometry(model)
    macs = layer_macs(t, c, m, n_update(t, 0.25))
    want = (layers * macs.non_reference + t * patch * c) / (layers * macs.full + t * patch * c)
    assert result.flop_ratios["vit_gflops_non_reference"] == pytest.approx(want, rel=0.03)
    assert result.flop_ratios["vit_gflops_reference"] == pytest.approx(1.0, rel=1e-6)
    fid = result.fidelity
    assert 0 < fid["token_cosine_mean"] <= 1 + 1e-6 and fid["first_token_kl"] >= 0
    assert "un-merged" in fid["token_cosine_matched"][0]
    text = format_table(result)
    assert "load" in text
    assert "ViT GFLOPs, reference chunks" in text and "ViT GFLOPs, non-reference chunks" in text


def test_a_budgeted_memory_reports_its_work_and_statistics(model):
    """InfiniPot-V compresses between prefills: bench gives that work's share of the prefill and the
    memory's own statistics (compressions, tokens dropped per layer) of the last repeat."""
    pipe = Pipeline.from_dict(
        {
            "name": "ipv",
            "stream": {"frames_per_chunk": 1},
            "stages": {
                "kv_cache": [
                    {"strategy": "infinipot_v", "budget_frames": 2, "query_ratio": 0.5, "tar_ratio": 1.0}
                ]
            },
        }
    )
    r = run_benchmark(pipe, model, random_frames(FRAMES), QUESTION, repeats=1, warmup=0, progress=False)
    assert r.spreads["kv_share_of_prefill"]["median"] > 0.0
    assert r.stage_overhead["kv_cache_share_of_prefill"] > 0.0
    (note,) = [n for n in r.notes if n.startswith("kv_cache stats after a repeat: ")]
    stats = json.loads(note.removeprefix("kv_cache stats after a repeat: "))["memory"]
    assert stats["compressions"] == FRAMES - 2  # before every chunk that would pass 2 frames
    assert stats["dropped_per_layer"] == [stats["dropped_per_layer"][0]] * len(stats["dropped_per_layer"])
    assert "kv_cache work between prefills / prefill" in format_table(r)
