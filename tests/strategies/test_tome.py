"""ToMe: reference fixtures (kernels and a SigLIP tower through the real layer patch), docs/design.md §8
merging properties, output modes against the pipeline's checks, and parameter validation."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from safetensors.torch import save_file
from torch import Tensor
from transformers import SiglipVisionConfig, SiglipVisionModel

from tests.support.fixture_cases import Case, Checker, collect, need, params, parse_tolerance, run_case
from tests.support.models import random_frames
from tokencompress.api.errors import CompatibilityError
from tokencompress.api.strategy import ChunkInfo
from tokencompress.api.types import Stage
from tokencompress.patching.block_routing import BlockPatch
from tokencompress.pipeline.config import PipelineConfig
from tokencompress.pipeline.pipeline import Pipeline
from tokencompress.strategies.tome import ToMe, ToMeParams, ToMeState
from tokencompress.strategies.tome_merge import (
    bipartite_soft_matching,
    capped_r,
    match_bipartite,
    merge_owner,
    merge_source,
    merge_wavg,
    parse_r,
    source_from_owner,
    unmerge_to_grid,
)
from tokencompress.targets.llava.siglip_block import SiglipBlockAdapter

# Tolerances of tests/fixtures/tome/README.md, used where a sidecar carries none of its own.
README_STEP_TOL = parse_tolerance("atol 1e-5, rtol 1e-5")  # x_out, x_mean_out, x_unmerged; the rest exact
README_E2E_TOL = parse_tolerance("atol/rtol 1e-4")  # tokens; sizes, source, owner, counts exact
PROPS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MODEL_PROPS = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------------------------- helpers


def _tol(case: Case, default: dict[str, float]) -> dict[str, float]:
    """The sidecar's ``tolerance`` atol and rtol, each falling back to the README's."""
    own = case.meta.get("tolerance", {})
    return parse_tolerance({key: own.get(key, value) for key, value in default.items()})


def _decode_r(spec):
    """A sidecar r: ``{"type": int|list|tuple, "value": ...}`` or a bare int / list."""
    if isinstance(spec, dict):
        kind, value = spec["type"], spec["value"]
        if kind == "tuple":
            return tuple(value)
        if kind == "list":
            return list(value)
        if kind == "int":
            return int(value)
        pytest.fail(f"unknown r type {kind!r}")
    return list(spec) if isinstance(spec, list) else int(spec)


# --------------------------------------------------------------------------------------- fixture kinds


def check_step(case: Case) -> dict[str, float]:
    p = need(case.meta, "params")
    t = case.tensors()
    x, metric = t["x"], t["metric"]
    size_in, source_in = t.get("size_in"), t.get("source_in")
    r, cls_tok, dist_tok = p["r"], p["class_token"], p["distill_token"]
    assert (size_in is None) == (p.get("size_in") is None) and (source_in is None) == (
        p.get("source_in") is None
    )

    match = match_bipartite(metric, r, cls_tok, dist_tok)
    merge, unmerge = bipartite_soft_matching(metric, r, cls_tok, dist_tok)
    r_eff = 0 if match is None else match.r
    assert r_eff == case.meta["r_effective"] == capped_r(r, x.shape[1], int(cls_tok) + int(dist_tok))
    x_out, size_out = merge_wavg(merge, x, size_in)
    source_out = merge_source(merge, x, source_in)
    assert x_out.shape[1] == case.meta["N_out"]

    expected = {k: t[k] for k in case.meta["expected"]}
    check = Checker(case, expected, _tol(case, README_STEP_TOL))
    check.close("x_out", x_out)
    check.exact("size_out", size_out)
    check.exact("source_out", source_out)
    check.close("x_mean_out", merge(x, mode="mean"))
    anchor = match.anchor_index() if match is not None else torch.arange(x.shape[1]).expand(x.shape[0], -1)
    check.exact("anchor_index", anchor)
    if "unm_idx" in expected:
        assert match is not None, f"{case.name}: the reference merged, this implementation did not"
        check.exact("unm_idx", match.unm_idx)  # order matters: it is the output order
        for b in range(x.shape[0]):
            want = set(zip(expected["src_idx"][b].tolist(), expected["dst_idx"][b].tolist(), strict=True))
            got = set(zip(match.src_idx[b].tolist(), match.dst_idx[b].tolist(), strict=True))
            assert got == want, f"{case.name}: sample {b}: (src, dst) pairs {sorted(got)} != {sorted(want)}"
        check.used("src_idx", "dst_idx")
    if "x_unmerged" in expected:
        check.close("x_unmerged", unmerge(x_out))
    # the owner index must say what the dense source says, and un-merge to the grid through it
    owner_in = None if source_in is None else source_in.argmax(dim=1)
    owner = merge_owner(unmerge, x_out, owner_in)
    assert torch.equal(owner, source_out.argmax(dim=1)), f"{case.name}: owner index disagrees with source"
    return check.done()


def check_chain(case: Case) -> dict[str, float]:
    p = need(case.meta, "params")
    steps = need(case.meta, "steps")
    t = case.tensors()
    x0 = x = t["x"]
    size = source = owner = None
    expected = {k: t[k] for k in case.meta["expected"]}
    check = Checker(case, expected, _tol(case, README_STEP_TOL))
    r_per_step = p.get("r_per_step", [s["r"] for s in steps])
    assert len(r_per_step) == len(steps)
    for i, (r, step) in enumerate(zip(r_per_step, steps, strict=True)):
        assert x.shape[1] == step["N_in"]
        merge, unmerge = bipartite_soft_matching(
            t[f"step{i}_metric"], r, p["class_token"], p["distill_token"]
        )
        source = merge_source(merge, x, source)
        x, size = merge_wavg(merge, x, size)
        owner = merge_owner(unmerge, x, owner)
        assert x.shape[1] == step["N_out"]
        check.close(f"step{i}_x_out", x)
        check.exact(f"step{i}_size_out", size)
        check.exact(f"step{i}_source_out", source)
        assert torch.equal(source.sum(dim=1), torch.ones_like(source[:, 0]))
        assert torch.equal(source.sum(dim=2, keepdim=True), size)
        assert torch.equal(owner, source.argmax(dim=1))
    # the README's chain invariant: final tokens are the mean of the originals they cover
    torch.testing.assert_close(x, (source @ x0) / size, **_tol(case, README_STEP_TOL))
    return check.done()


def check_schedule(case: Case) -> dict[str, float]:
    t = case.tensors()
    entries = need(case.meta, "entries")
    for entry in entries:
        r, layers = _decode_r(entry["r"]), entry["num_layers"]
        if "raises" in entry:
            # The reference divides by zero for one layer; ours returns the schedule's first entry
            # (the formula's value at layer 0 for any step), as parse_r documents.
            assert layers == 1, entry
            assert parse_r(r, layers) == parse_r(r, 2)[:1], entry
            continue
        got = parse_r(r, layers)
        assert got == entry["output"], (entry, got)
        assert sum(got) == entry.get("sum", sum(got))
        if entry.get("tensor"):
            assert torch.equal(torch.tensor(got, dtype=torch.long), t[entry["tensor"]])
    listed = {e["tensor"] for e in entries if e.get("tensor")}
    assert listed == set(t), f"{case.name}: tensors without an entry: {sorted(set(t) - listed)}"
    return {}


def _siglip_from(case: Case, weights: dict[str, Tensor]) -> SiglipVisionModel:
    cfg = dict(need(case.meta, "model", "config"))
    cfg["hidden_act"] = str(cfg["hidden_act"]).split()[0]  # "gelu_pytorch_tanh (GELU, tanh approximation)"
    model = SiglipVisionModel._from_config(SiglipVisionConfig(**cfg), attn_implementation="sdpa")
    result = model.load_state_dict(weights, strict=False)
    assert not result.unexpected_keys
    assert set(result.missing_keys) <= {"embeddings.position_ids"}
    return model.float().eval()


def _run_tower(model: SiglipVisionModel, tome: ToMe, pixels: Tensor, state: ToMeState | None = None):
    """One chunk through ``model`` with ``tome`` patched into every layer: (output, state)."""
    state = state if state is not None else tome.new_state()
    info = ChunkInfo(0, 0, pixels.shape[0])
    layers = model.encoder.layers
    with BlockPatch(layers, [SiglipBlockAdapter(layer) for layer in layers], [tome]) as patch:
        tome.start_chunk(state, info)
        with patch.chunk([state], info):
            out = model(pixel_values=pixels, output_hidden_states=True)
    return out, state


def _final_sizes_and_owners(state: ToMeState, embedded: Tensor) -> tuple[Tensor, Tensor]:
    """``state``'s sizes ``[F, K, 1]`` and owners ``[F, N0]``; ones and the identity where nothing merged
    (``ToMeState`` keeps None then), which is what the README's final sizes and source are."""
    f, n0 = embedded.shape[:2]
    size = state.size if state.size is not None else torch.ones(f, n0, 1)
    owner = state.owner if state.owner is not None else torch.arange(n0).expand(f, n0)
    return size, owner


@torch.no_grad()
def check_siglip_e2e(case: Case) -> dict[str, float]:
    t = case.tensors()
    weights = {k.removeprefix("weight."): v for k, v in t.items() if k.startswith("weight.")}
    inputs = {"pixel_values", "frame_rgb_uint8"} | {f"weight.{k}" for k in weights}
    expected = {k: v for k, v in t.items() if k not in inputs}
    check = Checker(case, expected, _tol(case, README_E2E_TOL))
    model = _siglip_from(case, weights)
    pixels = t["pixel_values"].float()
    n_layers = len(model.encoder.layers)

    check.close("nomerge_last_hidden_state", model(pixel_values=pixels).last_hidden_state)
    spec = _decode_r(need(case.meta, "r_schedule", "spec"))
    assert parse_r(spec, n_layers)[:n_layers] == case.meta["r_schedule"]["per_layer"][:n_layers]
    r = spec

    # compact: the reference's own layout (merged tokens, data-dependent order)
    compact, state = _run_tower(model, ToMe(r=r, output="compact"), pixels, ToMeState(trace=[]))
    assert [h.shape[1] for h in compact.hidden_states] == case.meta["tokens_per_stage"]
    check.close("out_pre_post_layernorm", compact.hidden_states[-1])
    check.close("out_last_hidden_state", compact.last_hidden_state)
    size, owner = _final_sizes_and_owners(state, compact.hidden_states[0])
    check.exact("out_size", size)
    check.exact("out_source", source_from_owner(owner, size.shape[1]))
    check.exact("out_owner_index", owner)
    # The README names five per-layer trace tensors and promises nothing about which layers have them:
    # a case may trace any layer, one whose r is 0 included. Check exactly the ones it stores.
    records = {rec.layer: rec for rec in state.trace}
    assert sorted(records) == list(range(n_layers)), f"{case.name}: the trace misses layers"
    traced = sorted({int(m.group(1)) for key in expected if (m := re.fullmatch(r"trace_layer(\d+)_.+", key))})
    for layer in traced:
        assert layer in records, f"{case.name}: trace of layer {layer}, but the tower has {n_layers} layers"
        rec, pre = records[layer], f"trace_layer{layer}_"
        for what, got in (("metric", rec.metric), ("x_after_merge", rec.x_after_merge), ("out", rec.out)):
            if pre + what in expected:
                check.close(pre + what, got)
        for what, got in (("size", rec.size), ("source", rec.source)):
            if pre + what in expected:
                check.exact(pre + what, got)

    # unmerge (default): every layer returns the grid; the tower output is the un-merged grid
    grid, grid_state = _run_tower(model, ToMe(r=r), pixels)
    assert all(h.shape == compact.hidden_states[0].shape for h in grid.hidden_states)
    check.close("out_unmerged_grid_pre_post_layernorm", grid.hidden_states[-1])
    check.close("out_unmerged_grid_last_hidden_state", grid.last_hidden_state)
    grid_size, grid_owner = _final_sizes_and_owners(grid_state, compact.hidden_states[0])
    assert torch.equal(grid_owner, owner) and torch.equal(grid_size, size)
    assert torch.equal(grid.hidden_states[-1], unmerge_to_grid(compact.hidden_states[-1], owner))
    return check.done()


KINDS: dict[str, Callable[[Case], dict[str, float]]] = {
    "bipartite_step": check_step,
    "bipartite_chain": check_chain,
    "r_schedule": check_schedule,
    "siglip_e2e": check_siglip_e2e,
}


@pytest.mark.parametrize("case", params("tome"))
def test_tome_fixture(case: Case) -> None:
    run_case(case, case.kind, KINDS, "ToMe fixture kind")


def test_an_unknown_fixture_kind_fails(tmp_path) -> None:
    case = Case(tmp_path / "mystery.json", {"kind": "bipartite_steps"})
    with pytest.raises(pytest.fail.Exception, match="unknown ToMe fixture kind"):
        test_tome_fixture(case)


@torch.no_grad()
def test_an_e2e_case_may_trace_a_layer_that_does_not_merge(tmp_path, monkeypatch) -> None:
    """A siglip_e2e case with r = 0 and a trace of its first layer only, as the README allows, passes.

    Built from the public case's weights and pixels; with nothing merging, every expected tensor is
    the plain transformers tower's (ones for sizes, the identity for the source), computed here
    from its own modules, not from ToMe.
    """
    (real,) = [c for c in collect("tome") if c.name == "e2e_siglip_56px_2layers_r4"]
    t = real.tensors()
    weights = {k.removeprefix("weight."): v for k, v in t.items() if k.startswith("weight.")}
    model = _siglip_from(real, weights)
    pixels = t["pixel_values"].float()
    plain = model(pixel_values=pixels, output_hidden_states=True)
    f, n, _ = plain.hidden_states[0].shape
    heads = model.config.num_attention_heads
    out = {k: v for k, v in t.items() if k.startswith("weight.") or k in ("pixel_values", "frame_rgb_uint8")}
    for layer_index, layer in enumerate(model.encoder.layers[:1]):
        h = plain.hidden_states[layer_index]
        k = layer.self_attn.k_proj(layer.layer_norm1(h))
        pre = f"trace_layer{layer_index}_"
        out[pre + "metric"] = k.view(f, n, heads, -1).mean(2)
        out[pre + "x_after_merge"] = h + layer.self_attn(layer.layer_norm1(h))[0]
        out[pre + "size"] = torch.ones(f, n, 1)
        out[pre + "source"] = torch.eye(n).expand(f, n, n).contiguous()
        out[pre + "out"] = plain.hidden_states[layer_index + 1]
    out["nomerge_last_hidden_state"] = plain.last_hidden_state
    for prefix in ("out_", "out_unmerged_grid_"):
        out[prefix + "pre_post_layernorm"] = plain.hidden_states[-1]
        out[prefix + "last_hidden_state"] = plain.last_hidden_state
    out["out_size"] = torch.ones(f, n, 1)
    out["out_source"] = torch.eye(n).expand(f, n, n).contiguous()
    out["out_owner_index"] = torch.arange(n).expand(f, n).contiguous()
    meta = {k: v for k, v in real.meta.items() if k not in ("decision_margins_per_layer", "case")}
    meta["r_schedule"] = {"spec": 0, "per_layer": [0] * len(model.encoder.layers)}
    meta["tokens_per_stage"] = [n] * (len(model.encoder.layers) + 1)
    folder = tmp_path / "tome"
    folder.mkdir()
    (folder / "e2e_r0_first_layer_traced.json").write_text(json.dumps(meta))
    save_file(
        {k: v.clone().contiguous() for k, v in out.items()},
        str(folder / "e2e_r0_first_layer_traced.safetensors"),
    )
    monkeypatch.setenv("TOKENCOMPRESS_EXTRA_FIXTURES", str(tmp_path))
    (case,) = [c for c in collect("tome") if c.name == "e2e_r0_first_layer_traced"]
    test_tome_fixture(case)


# ------------------------------------------------------------------------------------ kernel properties


@st.composite
def merge_inputs(draw: st.DrawFn) -> dict:
    """A ToMe step's inputs: tokens, metric, protection flags, and sometimes earlier merges.

    Values come from a seeded generator; metrics sometimes repeat rows or sit on a coarse grid,
    because exact ties are where ordering bugs hide.
    """
    b, n, c, width = (
        draw(st.integers(1, 3)),
        draw(st.integers(1, 24)),
        draw(st.integers(1, 6)),
        draw(st.integers(1, 5)),
    )
    class_token = draw(st.booleans())
    distill_token = class_token and draw(st.booleans())
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(b, n, width, generator=gen)
    metric = torch.randn(b, n, c, generator=gen)
    if draw(st.booleans()):
        metric = torch.round(metric)
        metric[metric.norm(dim=-1) == 0] = 1.0
    if draw(st.booleans()) and n > 1:
        metric[:, torch.randint(n, (n // 2,), generator=gen)] = metric[:, :1].clone()
    size = source = None
    if draw(st.booleans()):
        n0 = n + draw(st.integers(0, 10))
        owner = torch.cat([torch.arange(n), torch.randint(n, (n0 - n,), generator=gen)])
        owner = torch.stack([owner[torch.randperm(n0, generator=gen)] for _ in range(b)])
        source = torch.zeros(b, n, n0).scatter_(1, owner[:, None], 1.0)
        size = source.sum(dim=2, keepdim=True)
    r = draw(st.integers(0, n + 2))
    return dict(
        x=x,
        metric=metric,
        r=r,
        class_token=class_token,
        distill_token=distill_token,
        size=size,
        source=source,
    )


def _step(inp: dict):
    match = match_bipartite(inp["metric"], inp["r"], inp["class_token"], inp["distill_token"])
    merge, unmerge = bipartite_soft_matching(
        inp["metric"], inp["r"], inp["class_token"], inp["distill_token"]
    )
    x_out, size_out = merge_wavg(merge, inp["x"], inp["size"])
    source_out = merge_source(merge, inp["x"], inp["source"])
    return match, merge, unmerge, x_out, size_out, source_out


@PROPS
@given(inp=merge_inputs())
def test_sizes_sum_to_input_count_and_every_token_has_one_owner(inp: dict) -> None:
    b, n = inp["x"].shape[:2]
    _, _, unmerge, x_out, size_out, source_out = _step(inp)
    size_in = inp["size"] if inp["size"] is not None else torch.ones(b, n, 1)
    protected = int(inp["class_token"]) + int(inp["distill_token"])
    assert x_out.shape[1] == n - capped_r(inp["r"], n, protected)
    assert torch.equal(size_out.sum(dim=1), size_in.sum(dim=1))
    assert torch.equal(source_out.sum(dim=1), torch.ones_like(source_out[:, 0]))  # each original in one slot
    assert torch.equal(source_out.sum(dim=2, keepdim=True), size_out)
    owner_in = None if inp["source"] is None else inp["source"].argmax(dim=1)
    assert torch.equal(merge_owner(unmerge, x_out, owner_in), source_out.argmax(dim=1))


@PROPS
@given(inp=merge_inputs())
def test_unmerge_restores_the_grid_shape(inp: dict) -> None:
    match, _, unmerge, x_out, _, source_out = _step(inp)
    back = unmerge(x_out)
    assert back.shape == inp["x"].shape
    slots = (
        match.slot_index() if match is not None else torch.arange(x_out.shape[1]).expand(x_out.shape[0], -1)
    )
    assert torch.equal(back, unmerge_to_grid(x_out, slots))
    owner = source_out.argmax(dim=1)
    grid = unmerge_to_grid(x_out, owner)
    assert grid.shape == (x_out.shape[0], source_out.shape[2], x_out.shape[2])
    assert torch.equal(grid, torch.einsum("bkn,bkc->bnc", source_out, x_out))


@PROPS
@given(
    b=st.integers(1, 3),
    pairs=st.integers(1, 12),
    odd=st.booleans(),
    r=st.integers(0, 14),
    width=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
)
def test_merging_identical_tokens_loses_nothing(b, pairs, odd, r, width, seed) -> None:
    """Positions 2i and 2i+1 hold the same token, so every merge joins two copies of one value."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(b, pairs, 8, generator=gen)
    metric = base.repeat_interleave(2, dim=1)
    x = torch.randn(b, pairs, width, generator=gen).repeat_interleave(2, dim=1)
    if odd:  # one unpaired token at the end; pairs (cosine 1) always outrank it
        metric = torch.cat([metric, -base[:, :1]], dim=1)
        x = torch.cat([x, torch.randn(b, 1, width, generator=gen)], dim=1)
    merge, unmerge = bipartite_soft_matching(metric, r)
    x_out, size = merge_wavg(merge, x)
    torch.testing.assert_close(unmerge(x_out), x, atol=1e-6, rtol=1e-6)
    assert size.max() <= 2


@PROPS
@given(inp=merge_inputs().filter(lambda d: d["class_token"] and d["source"] is None))
def test_protected_tokens_never_merge(inp: dict) -> None:
    match, _, _, x_out, size_out, source_out = _step(inp)
    n = inp["x"].shape[1]
    for pos in range(1 + int(inp["distill_token"])):
        if pos >= n:
            continue
        assert torch.equal(source_out[:, pos, pos], torch.ones(source_out.shape[0]))
        assert torch.equal(size_out[:, pos, 0], torch.ones(size_out.shape[0]))
        torch.testing.assert_close(x_out[:, pos], inp["x"][:, pos], atol=0, rtol=0)
    if match is not None:
        assert bool(
            (
                match.anchor_index()[:, : 1 + int(inp["distill_token"])]
                == torch.arange(1 + int(inp["distill_token"]))
            ).all()
        )


@PROPS
@given(inp=merge_inputs())
def test_samples_of_a_batch_never_mix(inp: dict) -> None:
    _, _, _, x_out, size_out, source_out = _step(inp)
    for s in range(inp["x"].shape[0]):
        one = {k: (v[s : s + 1] if isinstance(v, Tensor) else v) for k, v in inp.items()}
        _, _, _, xs, ss, srcs = _step(one)
        torch.testing.assert_close(xs, x_out[s : s + 1], atol=1e-6, rtol=1e-6)
        assert torch.equal(ss, size_out[s : s + 1]) and torch.equal(srcs, source_out[s : s + 1])


def test_exact_ties_go_to_the_lowest_index() -> None:
    metric = torch.ones(2, 10, 3)
    match = match_bipartite(metric, 3)
    assert match.src_idx.tolist() == [[0, 1, 2]] * 2
    assert match.unm_idx.tolist() == [[3, 4]] * 2
    assert match.dst_idx.tolist() == [[0, 0, 0]] * 2


def test_zero_metric_rows_do_not_make_nan() -> None:
    metric = torch.zeros(1, 6, 4)
    merge, _ = bipartite_soft_matching(metric, 2)
    x, _ = merge_wavg(merge, torch.randn(1, 6, 3))
    assert torch.isfinite(x).all() and x.shape == (1, 4, 3)


def test_parse_r_forms() -> None:
    assert parse_r(3, 1) == [3]  # the reference divides by zero here
    assert parse_r((8, -1.0), 1) == [16]
    assert parse_r([1, 2], 4) == [1, 2, 0, 0]
    assert parse_r([1, 2, 3], 2) == [1, 2, 3]
    assert parse_r((8, -1.0), 12) == [16, 14, 13, 11, 10, 8, 7, 5, 4, 2, 1, 0]
    with pytest.raises(ValueError):
        parse_r((1, 2, 3), 4)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ the tower


@pytest.fixture(scope="module")
def tiny() -> SiglipVisionModel:
    """A seeded 3-layer SigLIP: 4×4 = 16 tokens of width 32, 2 heads."""
    torch.manual_seed(0)
    config = SiglipVisionConfig(
        hidden_size=32, num_attention_heads=2, num_hidden_layers=3, intermediate_size=64,
        image_size=28, patch_size=7, vision_use_head=False,
    )  # fmt: skip
    return SiglipVisionModel._from_config(config, attn_implementation="sdpa").eval()


def _frames(seed: int, n: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 28, 28, generator=gen)


R_SPECS = st.one_of(
    st.integers(0, 10),
    st.lists(st.integers(0, 10), min_size=0, max_size=4),
    st.tuples(st.integers(0, 6), st.sampled_from([-1.0, -0.5, 0.0, 1.0])),
)


@MODEL_PROPS
@given(r=R_SPECS, prop_attn=st.booleans(), n=st.integers(1, 3), seed=st.integers(0, 999))
@torch.no_grad()
def test_tower_unmerge_keeps_the_shape_and_agrees_with_compact(tiny, r, prop_attn, n, seed) -> None:
    frames = _frames(seed, n)
    plain = tiny(pixel_values=frames, output_hidden_states=True)
    grid, g_state = _run_tower(tiny, ToMe(r=r, prop_attn=prop_attn), frames)
    compact_tome = ToMe(r=r, prop_attn=prop_attn, output="compact")
    compact, c_state = _run_tower(tiny, compact_tome, frames)
    assert [h.shape for h in grid.hidden_states] == [h.shape for h in plain.hidden_states]
    assert grid.last_hidden_state.shape == plain.last_hidden_state.shape
    assert compact.last_hidden_state.shape[1] == compact_tome.tokens_out(16, 3)
    if c_state.owner is None:
        assert torch.equal(grid.last_hidden_state, compact.last_hidden_state)
    else:  # same maths, only copies differ
        assert torch.equal(g_state.owner, c_state.owner)
        assert torch.equal(grid.last_hidden_state, unmerge_to_grid(compact.last_hidden_state, c_state.owner))
        assert torch.equal(c_state.size.sum(dim=1), torch.full((n, 1), 16.0))


@torch.no_grad()
def test_r_zero_is_the_plain_tower(tiny) -> None:
    frames = _frames(1, 2)
    got, state = _run_tower(tiny, ToMe(r=0), frames)
    assert state.owner is None
    torch.testing.assert_close(
        got.last_hidden_state, tiny(pixel_values=frames).last_hidden_state, atol=1e-6, rtol=0
    )


@torch.no_grad()
def test_frames_and_chunks_never_mix(tiny) -> None:
    tome = ToMe(r=3)
    frames = _frames(2, 3)
    together, _ = _run_tower(tiny, tome, frames)
    state = tome.new_state()
    _run_tower(tiny, tome, _frames(3, 2), state)  # an earlier chunk of the same stream
    for f in range(3):
        alone, _ = _run_tower(tiny, tome, frames[f : f + 1], state)
        torch.testing.assert_close(
            alone.last_hidden_state[0], together.last_hidden_state[f], atol=1e-5, rtol=1e-5
        )


@torch.no_grad()
def test_leaving_the_patch_restores_the_tower(tiny) -> None:
    frames = _frames(4, 2)
    before = tiny(pixel_values=frames).last_hidden_state
    _run_tower(tiny, ToMe(r=4), frames)
    assert all("forward" not in layer.__dict__ for layer in tiny.encoder.layers)
    assert torch.equal(tiny(pixel_values=frames).last_hidden_state, before)


@torch.no_grad()
def test_key_bias_attention_matches_explicit_softmax(tiny) -> None:
    adapter = SiglipBlockAdapter(tiny.encoder.layers[0])
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 7, 32, generator=gen) for _ in range(3))
    bias = torch.rand(2, 7, generator=gen).mul(3).add(1).log()
    got = adapter.attention(q, k, v, key_bias=bias)
    heads = [t.view(2, 7, 2, 16).transpose(1, 2) for t in (q, k, v)]
    logits = heads[0] @ heads[1].transpose(-1, -2) / 16**0.5 + bias[:, None, None, :]
    want = (logits.softmax(-1) @ heads[2]).transpose(1, 2).reshape(2, 7, 32)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------- the target and the pipeline


def _pipeline(tome: ToMe) -> Pipeline:
    return Pipeline(PipelineConfig(name="tome", stages={Stage.PRE_VIT_BLOCK: [tome]}))


@torch.no_grad()
def test_llava_onevision_stock_pooling_runs_in_unmerge_mode(tiny_llava_ov) -> None:
    frames = random_frames(2, seed=7)
    with _pipeline(ToMe(r=0)).apply(tiny_llava_ov) as bound:
        plain = bound.stream().encode_only(frames)
    with _pipeline(ToMe(r=12)).apply(tiny_llava_ov) as bound:
        merged = bound.stream().encode_only(frames)
    assert merged.count == plain.count == 2 * 16 and merged.grid == plain.grid
    assert not torch.equal(merged.tokens, plain.tokens)


def test_compact_and_class_token_are_refused_by_llava_onevision(tiny_llava_ov) -> None:
    _pipeline(ToMe(r=4)).bind(tiny_llava_ov)
    with pytest.raises(CompatibilityError, match="changes the token count"):
        _pipeline(ToMe(r=4, output="compact")).bind(tiny_llava_ov)
    with pytest.raises(CompatibilityError, match="cls_token"):
        _pipeline(ToMe(r=4, class_token=True)).bind(tiny_llava_ov)


# ------------------------------------------------------------------------------------ parameters


def test_params_forms_and_declarations() -> None:
    assert ToMeParams(r=(8, -1.0)) == ToMeParams(r=8, inflection=-1.0)
    assert ToMeParams(r=8, inflection=-1.0).schedule(3) == parse_r((8, -1.0), 3)
    assert ToMeParams(r=[3, 2]).schedule(4) == [3, 2, 0, 0]
    round_trip = ToMeParams(r=(4, 0.5))
    assert ToMeParams.model_validate(round_trip.model_dump(mode="json")) == round_trip
    unmerge, compact = ToMe(r=4), ToMe(r=4, output="compact")
    assert (unmerge.changes_count, compact.changes_count) == (False, True)
    assert unmerge.planned_count(729, 2) == 1458 and compact.planned_count(729, 2) is None
    assert ToMe.name == "tome" and ToMe.stage is Stage.PRE_VIT_BLOCK and unmerge.computes_layer
    assert ToMe(r=20).tokens_out(729, 26) == 209 and ToMe(r=21).tokens_out(729, 26) == 183


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"r": -1},
        {"r": [2, -1]},
        {"r": [2, 2], "inflection": 0.5},
        {"r": (2, 0.5), "inflection": 0.5},
        {"r": 2, "inflection": 2.0},
        {"r": 2, "distill_token": True},
        {"r": 2, "output": "grid"},
        {"r": 2, "ratio": 0.5},
    ],
)
def test_params_reject_bad_values(kwargs: dict) -> None:
    with pytest.raises(ValidationError):
        ToMeParams(**kwargs)
