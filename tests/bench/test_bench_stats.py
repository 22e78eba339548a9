"""Bench statistics, fidelity, sweeps and the packed-weight linears, on synthetic inputs (exact)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from tokencompress import Pipeline
from tokencompress.api.errors import TokenCompressError
from tokencompress.api.tokens import VisualTokens
from tokencompress.bench.fidelity import fidelity, token_cosine
from tokencompress.bench.spreads import one_repeat, per_repeat_ratios, spread
from tokencompress.bench.sweep import parse_sweep, sweep_pipelines
from tokencompress.kernels.packed_linear import PackedLinears, packing_available
from tokencompress.models.loading import BENCH_OVERRIDES, default_model_config


def chunk(vit: float, prefill: float = 10.0, compress: float = 0.0) -> dict[str, float]:
    return {
        "vit_ms": vit,
        "prefill_ms": prefill,
        "compress_ms": compress,
        "total_ms": vit + prefill + compress,
    }


def test_one_repeat_weights_chunk_kinds_by_count() -> None:
    base = [chunk(100.0), chunk(100.0), chunk(100.0), chunk(400.0)]  # a load spike on chunk 3
    pipe = [chunk(100.0), chunk(30.0), chunk(100.0), chunk(30.0, prefill=5.0, compress=0.5)]
    kinds = ["reference", "non_reference", "reference", "non_reference"]
    r = one_repeat(base, pipe, kinds)
    assert r["vit_ms_reference"] == 1.0
    assert r["vit_ms_non_reference"] == 30.0 / 250.0  # medians of the kind's chunks
    assert r["vit_ms"] == (2 * 100.0 + 2 * 30.0) / (2 * 100.0 + 2 * 250.0)
    assert r["prefill_ms"] == 35.0 / 40.0
    assert r["prefill_ms_chunk_median"] == 1.0
    assert r["prefill_with_stage_ms"] == 35.5 / 40.0
    assert r["stage_share_of_prefill"] == 0.5 / 35.0
    assert r["kv_share_of_prefill"] is None  # no kv_cache work recorded


def test_kv_cache_work_between_prefills_is_its_own_share() -> None:
    base = [chunk(100.0), chunk(100.0)]
    pipe = [{**chunk(100.0, prefill=8.0), "kv_ms": 0.0}, {**chunk(100.0, prefill=12.0), "kv_ms": 1.0}]
    r = one_repeat(base, pipe, ["all", "all"])
    assert r["kv_share_of_prefill"] == 1.0 / 20.0
    assert r["stage_share_of_prefill"] == 0.0


def test_per_repeat_ratios_spread_over_repeats() -> None:
    runs_b = [{"chunks": [chunk(100.0)], "answer_ms": 10.0, "first_token_ms": 10.0} for _ in range(3)]
    runs_p = [{"chunks": [chunk(v)], "answer_ms": 10.0, "first_token_ms": 5.0} for v in (50.0, 60.0, 40.0)]
    s = per_repeat_ratios(runs_b, runs_p, ["all"])
    assert s["vit_ms"] == {"median": 0.5, "min": 0.4, "max": 0.6, "runs": [0.5, 0.6, 0.4]}
    assert s["ttft_ms"]["median"] == 0.5
    assert "vit_ms_all" not in s
    assert spread([None]) is None


def carrier(x: torch.Tensor) -> VisualTokens:
    return VisualTokens.from_frames(x, (2, 3))


def test_fidelity_of_identical_and_pruned_tokens() -> None:
    gen = torch.Generator().manual_seed(0)
    base = carrier(torch.randn(2, 6, 8, generator=gen))
    same = fidelity([base], [base], torch.randn(11, generator=gen), None)
    assert same["token_cosine_mean"] == pytest.approx(1.0) and same["first_token_kl"] is None
    kept = base.take(torch.tensor([0, 4, 7, 11]))
    cos, how = token_cosine(base, kept)
    assert cos == pytest.approx(1.0) and "un-merged" in how
    noisy = kept.with_tokens(-kept.tokens)
    assert token_cosine(base, noisy)[0] == pytest.approx(-1.0)
    logits = torch.randn(11, generator=gen)
    f = fidelity([base], [noisy], logits, logits + 1.0)  # a constant shift leaves the softmax alone
    assert f["first_token_kl"] == pytest.approx(0.0, abs=1e-6) and f["first_token_same"]
    assert "proxy" in f["proxy_note"]


def test_sweep_sets_the_parameter_where_it_exists() -> None:
    assert parse_sweep("update_token_ratio=0.1,0.25") == ("update_token_ratio", [0.1, 0.25])
    assert parse_sweep("tokens_per_frame=30,60") == ("tokens_per_frame", [30, 60])
    for bad in ("x", "x=", "x=a"):
        with pytest.raises(TokenCompressError, match="--sweep"):
            parse_sweep(bad)
    pipe = Pipeline.from_dict(
        {
            "name": "stc",
            "stages": {
                "pre_vit_block": [{"strategy": "stc_cacher", "update_token_ratio": 0.25}],
                "pre_prefill": [{"strategy": "stc_pruner", "tokens_per_frame": 60}],
            },
        }
    )
    variants = sweep_pipelines(pipe, "update_token_ratio", [0.1, 0.5])
    got = [v.config.to_dict()["stages"] for v in variants]
    assert [g["pre_vit_block"][0]["update_token_ratio"] for g in got] == [0.1, 0.5]
    assert all(g["pre_prefill"][0]["tokens_per_frame"] == 60 for g in got)
    with pytest.raises(TokenCompressError, match="no strategy"):
        sweep_pipelines(pipe, "nope", [1])


def test_bench_preset_has_the_issue_widths() -> None:
    cfg = default_model_config(100, 98, 99, **{k: dict(v) for k, v in BENCH_OVERRIDES.items()})
    v, t = cfg.vision_config, cfg.text_config
    assert (v.hidden_size, v.intermediate_size, v.num_attention_heads, v.num_hidden_layers) == (
        1152,
        4304,
        16,
        6,
    )
    assert (v.image_size // v.patch_size) ** 2 == 729
    assert (t.hidden_size, t.intermediate_size, t.num_attention_heads, t.num_key_value_heads) == (
        896,
        4864,
        14,
        2,
    )
    assert t.num_hidden_layers == 8


@pytest.mark.skipif(not packing_available(torch.zeros(1)), reason="no oneDNN in this torch build")
@settings(max_examples=10, deadline=None)
@given(
    rows=st.integers(1, 40),
    width=st.integers(1, 48),
    outs=st.lists(st.integers(1, 40), min_size=1, max_size=3),
)
@torch.no_grad()
def test_packed_linears_match_stock(rows: int, width: int, outs: list[int]) -> None:
    torch.manual_seed(rows * 7 + width)
    mods = tuple(nn.Linear(width, o, bias=i != 1) for i, o in enumerate(outs))
    x, packs = torch.randn(2, rows, width), PackedLinears()
    want = torch.cat([m(x) for m in mods], -1)
    torch.testing.assert_close(packs(mods, x), want, atol=1e-5, rtol=1e-5)
    add = torch.randn_like(want)
    torch.testing.assert_close(packs(mods, x, add=add), add + want, atol=1e-5, rtol=1e-5)
    mods[0].weight.mul_(2.0)  # in place: the pack must be rebuilt
    torch.testing.assert_close(packs(mods, x), torch.cat([m(x) for m in mods], -1), atol=1e-5, rtol=1e-5)
