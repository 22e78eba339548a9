"""StreamingTOM OQM kernels: reference fixtures (the four oqm kinds), quantisation and store properties."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from tests.support.fixture_cases import Case, Checker, need, params
from tokencompress.kernels.rope import inv_freq
from tokencompress.strategies.streamingtom_oqm import (
    GroupStore,
    OQMLayer,
    OQMSettings,
    budget_groups,
    codes_of,
    dequantize,
    group_keys,
    pack,
    quantize,
    query_repr,
    rope,
    select_groups,
    unpack,
)

PROPS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
METHOD = "streamingtom"
QUANT, RETRIEVAL = "streamingtom_oqm_quant", "streamingtom_oqm_retrieval"
STREAM, ATTN = "streamingtom_oqm_stream", "streamingtom_oqm_retrieval_attn"
ALL_FIELDS = ("keys", "k_packed", "k_scales", "k_mins", "v_packed", "v_scales", "v_mins")


# ------------------------------------------------------------------ fixtures
def _p(case: Case, *keys: str):  # type: ignore[no-untyped-def]
    return need(case.meta, "params", *keys, where=case.name)


def _check_quant(case: Case) -> dict[str, float]:
    t = case.tensors()
    g, bits = int(_p(case, "group_size")), int(_p(case, "bits"))
    check = Checker(case, t, case.tolerance("dequant"))
    for tag in ("k", "v"):
        x = t[tag][0]
        check.used(tag)
        codes = codes_of(x, g, bits)
        q = quantize(x, g, bits)
        check.exact(f"{tag}.codes", codes.long()[None])
        check.exact(f"{tag}.packed", q.packed.long()[None])
        check.close(f"{tag}.scales", q.scales[None], **case.tolerance("scales"))
        check.exact(f"{tag}.mins", q.mins[None])
        check.close(f"{tag}.dequant", dequantize(q.packed, q.scales, q.mins, g, bits)[None])
    return check.done()


def _acceptable(case: Case, entry: dict) -> list[list[int]]:
    return [list(a) for a in entry.get("acceptable_selected", [need(entry, "selected", where=case.name)])]


def _check_retrieval(case: Case) -> dict[str, float]:
    t = case.tensors()
    g, kvh = int(_p(case, "group_size")), int(_p(case, "num_kv_heads"))
    budget = budget_groups(int(_p(case, "retrieval_max_tokens")), g)
    assert budget == int(_p(case, "budget_groups")), case.name
    check = Checker(case, t, case.tolerance("group_keys"))
    for entry in need(case.meta, "per_layer", where=case.name):
        pre = f"layer{entry['layer']}."
        keys, rep = group_keys(t[pre + "keys"][0], g), query_repr(t[pre + "query"][0], kvh)
        check.used(pre + "keys", pre + "query")
        check.close(pre + "group_keys", keys)
        check.close(pre + "query_repr", rep, **case.tolerance("query_repr"))
        sel = select_groups(keys, rep, budget)
        if pre + "similarity" in t:
            assert sel.scores is not None, case.name
            check.close(pre + "similarity", sel.scores, **case.tolerance("similarity"))
        else:
            assert sel.scores is None and entry["branch"] == "all", case.name
        assert sel.indices.tolist() in _acceptable(case, entry), (case.name, sel.indices.tolist())
        check.used(pre + "selected")
    return check.done()


def _layer(case: Case, budget_tokens: int, bits: int = 4) -> OQMLayer:
    g = int(_p(case, "group_size"))
    cfg = OQMSettings(g, bits, int(_p(case, "sliding_window_size")), budget_groups(budget_tokens, g))
    heads, kvh, d = (int(_p(case, k)) for k in ("num_heads", "num_kv_heads", "head_dim"))
    return OQMLayer(cfg, heads, kvh, d, inv_freq(d, float(_p(case, "rope_theta"))))


def _stream_chunk(check: Checker, mem: OQMLayer, t: dict, pre: str, length: int) -> None:
    wk, wv = mem.window()
    check.close(pre + "window_k", wk[None])
    check.close(pre + "window_v", wv[None])
    pos = mem.next_positions(length, wk.shape[1] - mem.n_init)
    check.exact(pre + "positions", pos)
    k_rot = rope(t[pre + "k_pre"][0], pos, mem.freqs)
    check.close(pre + "k_cache", k_rot[None], **check.case.tolerance("k_cache"))
    before = len(mem.store)
    mem.store_chunk(t[pre + "k_pre"][0], k_rot, t[pre + "v"][0])
    check.used(pre + "k_pre", pre + "v")
    rows = mem.store.span(before, ALL_FIELDS)
    check.close(pre + "group_keys", rows["keys"], **check.case.tolerance("group_keys"))
    for side in ("k", "v"):
        packed = rows[f"{side}_packed"].transpose(0, 1).reshape(1, mem.kvh, -1, mem.d)
        check.exact(f"{pre}{side}_packed", packed.long())
        check.exact(f"{pre}{side}_mins", rows[f"{side}_mins"].transpose(0, 1)[None])
        scales = rows[f"{side}_scales"].transpose(0, 1)[None]
        check.close(f"{pre}{side}_scales", scales, **check.case.tolerance("k_scales / v_scales"))


def _stream_question(check: Checker, mem: OQMLayer, t: dict, pre: str, entry: dict) -> None:
    case = check.case
    sel, rep = mem.select(t[pre + "query"][0])
    check.used(pre + "query")
    check.close(pre + "query_repr", rep, **case.tolerance("query_repr"))
    if pre + "similarity" in t:
        check.close(pre + "similarity", sel.scores, **case.tolerance("similarity"))
    assert sel.indices.tolist() in _acceptable(case, entry), (case.name, pre, sel.indices.tolist())
    check.used(pre + "selected", pre + "retrieved_positions")
    rk, rv = mem.retrieve(sel.indices)
    assert rk.shape[1] == int(entry["prompt_position_start"]) == t[pre + "retrieved_positions"].numel()
    check.close(pre + "retrieved_k", rk[None])
    check.close(pre + "retrieved_v", rv[None])


def _check_stream(case: Case) -> dict[str, float]:
    t = case.tensors()
    check = Checker(
        case, t, case.tolerance("window_k / window_v / retrieved_k / retrieved_v / final.window_*")
    )
    ops, info = _p(case, "ops"), need(case.meta, "ops", where=case.name)
    for layer in range(int(_p(case, "layers"))):
        mem = _layer(case, int(_p(case, "retrieval_max_tokens")), int(_p(case, "quantization_bits")))
        for i, op in enumerate(ops):
            pre = f"layer{layer}.op{i}."
            if op[0] == "init":
                mem.init_k, mem.init_v = t[pre + "k"][0], t[pre + "v"][0]
                check.used(pre + "k", pre + "v")
            elif op[0] == "chunk":
                _stream_chunk(check, mem, t, pre, int(op[1]))
            elif op[0] == "question":
                _stream_question(check, mem, t, pre, info[i]["per_layer"][layer])
            else:
                pytest.fail(f"{case.name}: unknown op {op!r}")
        wk, wv = mem.window()
        check.close(f"layer{layer}.final.window_k", wk[None])
        check.close(f"layer{layer}.final.window_v", wv[None])
        keys = mem.store.span(0, ("keys",))["keys"]
        check.close(f"layer{layer}.final.group_keys", keys, **case.tolerance("group_keys"))
    return check.done()


def _check_attn(case: Case) -> dict[str, float]:
    t = case.tensors()
    mem = _layer(case, int(_p(case, "retrieval_max_tokens")))
    mem.init_k, mem.init_v = t["init.k"][0], t["init.v"][0]
    check = Checker(case, t, case.tolerance("attn_output"))
    check.used("init.k", "init.v", "hidden_states")
    for c in range(len(_p(case, "chunks_tokens"))):
        pre = f"chunk{c}."
        check.close(pre + "k_cache", rope(t[pre + "k_pre"][0], t[pre + "positions"], mem.freqs)[None])
        mem.store_chunk(t[pre + "k_pre"][0], t[pre + "k_cache"][0], t[pre + "v"][0])
        check.used(pre + "k_pre", pre + "v", pre + "positions")
    hidden = t["hidden_states"][0]
    heads, kvh, d = mem.heads, mem.kvh, mem.d
    lq = hidden.shape[0]

    def proj(name: str, h: int) -> torch.Tensor:
        check.used(f"{name}.weight", f"{name}.bias")
        return (hidden @ t[f"{name}.weight"].T + t[f"{name}.bias"]).view(lq, h, d).transpose(0, 1)

    q, k, v = proj("q_proj", heads), proj("k_proj", kvh), proj("v_proj", kvh)
    check.close("query_pre", q[None])
    check.close("question_k_pre", k[None])
    check.close("question_v", v[None])
    check.close("question_v_stored", v[None])
    out, info = mem.question(q, k, v)
    check.exact("selected", info.selection.indices)
    check.close("retrieved_k", mem.answer_k[None], **case.tolerance("retrieved_k / retrieved_v"))
    check.close("retrieved_v", mem.answer_v[None], **case.tolerance("retrieved_k / retrieved_v"))
    p = info.retrieved
    assert p == int(_p(case, "retrieved_len_P")), case.name
    at = torch.arange(p, p + lq)
    check.close("question_k_rotated", rope(k, at, mem.freqs)[None], **case.tolerance("question_k_rotated"))
    check.close("attn_output", out[None])
    return check.done()


CHECKS = {QUANT: _check_quant, RETRIEVAL: _check_retrieval, STREAM: _check_stream, ATTN: _check_attn}


@pytest.mark.parametrize("case", params(METHOD, set(CHECKS)))
def test_streamingtom_oqm_fixture(case: Case) -> None:
    errors = CHECKS[case.kind](case)
    print(f"{case.name} max abs errors: " + ", ".join(f"{k}={v:.2e}" for k, v in errors.items()))


@pytest.mark.parametrize("kind", sorted(CHECKS))
def test_an_unreadable_oqm_case_fails(tmp_path, kind: str) -> None:
    (tmp_path / "broken.json").write_text(json.dumps({"kind": kind, "params": {}}))
    save_file({"x": torch.zeros(1)}, str(tmp_path / "broken.safetensors"))
    with pytest.raises((pytest.fail.Exception, KeyError)):
        CHECKS[kind](Case(tmp_path / "broken.json", json.loads((tmp_path / "broken.json").read_text())))


# ---------------------------------------------------------------- properties
@PROPS
@given(
    bits=st.sampled_from([2, 4]),
    groups=st.integers(1, 4),
    g_units=st.integers(1, 4),
    kvh=st.integers(1, 2),
    d=st.integers(1, 5),
    seed=st.integers(0, 2**16),
    scale=st.floats(1e-3, 1e3),
)
def test_quantisation_is_exact_on_its_grid_and_within_half_a_step(bits, groups, g_units, kvh, d, seed, scale):
    """Codes round-trip through packing; dequantised values lie within half a step of the input, and
    re-quantising the dequantised tensor gives back the same codes."""
    g = g_units * (8 // bits)
    x = (
        torch.randn(kvh, groups * g, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        * scale
    )
    q = quantize(x, g, bits)
    codes = codes_of(x, g, bits)
    assert torch.equal(unpack(pack(codes, bits), bits), codes) and int(codes.max()) <= 2**bits - 1
    back = dequantize(q.packed, q.scales, q.mins, g, bits)
    step = q.scales.repeat_interleave(g, dim=1)
    assert bool(((back - x).abs() <= step / 2 + 1e-9 * scale).all())
    assert torch.equal(codes_of(back, g, bits), codes)
    assert q.nbytes() == x.numel() * bits // 8 + 2 * (x.numel() // g) * x.element_size()


@PROPS
@given(
    batches=st.lists(st.integers(1, 5), min_size=0, max_size=8),
    window=st.integers(1, 12),
    slab=st.integers(1, 4),
)
def test_window_takes_whole_newest_batches_then_the_tail_of_the_next(batches, window, slab) -> None:
    """The window rule on storage batches (in groups), and the store's slabs give back every row."""
    g = 2
    mem = OQMLayer(OQMSettings(g, 4, window * g, 1, slab_groups=slab), 2, 1, 2, inv_freq(2, 1e4))
    start = 0
    for m in batches:
        k = torch.arange(start, start + m * g, dtype=torch.float32)[None, :, None].expand(1, -1, 2)
        mem.store_chunk(k, k, k)
        start += m * g
    room, first = window, sum(batches)
    for m in reversed(batches):
        if m > room:
            first -= room
            break
        room, first = room - m, first - m
    assert mem.window_start() == first
    if not batches:
        return
    keys = mem.store.span(0, ("keys",))["keys"]
    assert torch.equal(keys[:, 0], torch.arange(len(keys), dtype=torch.float32) * g + (g - 1) / 2)
    ids = torch.randperm(len(keys))
    assert torch.equal(mem.store.gather(ids, ("keys",))["keys"], keys[ids])


def test_store_snapshot_is_by_reference_and_restores_exactly() -> None:
    store = GroupStore(slab_groups=2)
    row = {"keys": torch.ones(3, 4)}
    store.add(row)
    saved = store.snapshot()
    store.add({"keys": torch.full((2, 4), 2.0)})
    store.restore(saved)
    assert len(store) == 3 and store.batches == [3]
    assert torch.equal(store.span(0, ("keys",))["keys"], torch.ones(3, 4))


def test_budget_rounds_up_to_whole_groups() -> None:
    assert budget_groups(12544, 50) == 251 and budget_groups(20, 8) == 3 and budget_groups(16, 8) == 2
