"""InfiniPot-V: reference fixtures (the authors' process_kv_cache and block driver), the causal and
end-of-video schedules, selection properties and parameter errors. One test per fixture case file,
dispatched on its ``kind``; cases from ``$TOKENCOMPRESS_EXTRA_FIXTURES/infinipot_v/`` too."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from transformers import DynamicCache

from tests.support.fixture_cases import Case, Checker, need, params, run_case
from tokencompress.api.errors import BudgetError, CompatibilityError
from tokencompress.api.kv_cache import DecoderLayout
from tokencompress.api.kv_cache_strategy import KVBuild
from tokencompress.api.target import LLMState
from tokencompress.strategies.infinipot_v import InfiniPotV, InfiniPotVMemory, InfiniPotVParams
from tokencompress.strategies.infinipot_v_select import budgets, pooling_of_layer, select

PROPS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------ fixtures
def _kept_ok(case: Case, chk: Checker, key: str, got: torch.Tensor, alternatives: dict | None) -> None:
    """Exact, or per head any listed tie alternative (``acceptable_kept_vision_idx``)."""
    want = chk.expected[key]
    assert got.shape == want.shape, (case.name, key)
    if alternatives is None:
        chk.exact(key, got)
        return
    for h in range(want.shape[0]):
        allowed = alternatives.get(f"head{h}", [want[h].tolist()])
        assert got[h].tolist() in allowed, f"{case.name}: {key} head {h}: {got[h].tolist()} not in {allowed}"
    chk.used(key)


def check_step(case: Case) -> dict[str, float]:
    p = need(case.meta, "params", where=case.name)
    t = case.tensors()
    chk = Checker(case, t, case.tolerance("tar_score", "van_score"))
    s, tpf, n_layers = p["system_size"], p["token_per_frame"], p["num_layers"]
    for key in (k for k in t if k.endswith(("keys_pre_rope", "position_ids"))):
        chk.used(key)  # informational: the algorithm never rotates anything
    for layer, info in enumerate(need(case.meta, "per_layer", where=case.name)):
        pre = f"layer{layer}."
        keys, values = t[pre + "keys"], t[pre + "values"]
        chk.used(pre + "keys", pre + "values")
        if not info["compressed"]:
            continue
        pool = pooling_of_layer(layer, n_layers) if p["adaptive_pooling"] else (-1, 1)
        sel = select(
            keys[0, :, s:], values[0, :, s:], tpf, p["compress_frame_num"], p["tar_ratio"], p["query_ratio"],
            pool, rows=p.get("height_width"),
        )  # fmt: skip
        assert (sel.budgets.van, sel.budgets.tar) == (info["attn_budget"], info["tar_budget"]), case.name
        _kept_ok(case, chk, pre + "kept_vision_idx", sel.kept, info.get("acceptable_kept_vision_idx"))
        idx = sel.kept[..., None].expand(-1, -1, keys.shape[-1])
        for name, x in (("new_keys", keys), ("new_values", values)):
            got = torch.cat((x[:, :, :s], x[0, :, s:].gather(1, idx)[None]), dim=2)
            if info.get("acceptable_kept_vision_idx") is None:
                chk.exact(pre + name, got)
            else:  # a tie alternative: the gather at our own indices
                assert got.shape == t[pre + name].shape
                chk.used(pre + name)
        chk.close(pre + "van_score", sel.van_score)
        if sel.tar_score is not None:
            chk.close(pre + "tar_score", sel.tar_score)
            chk.exact(pre + "tar_selected", sel.tar_selected)
    return chk.done()


def _memory(p: dict, schedule: str) -> InfiniPotVMemory:
    extra = {"keep_frames": p["compress_frame_num"], "total_frames": p["total_frames"]}
    params = InfiniPotVParams(
        budget_frames=p["block_size"], tar_ratio=p["tar_ratio"], query_ratio=p["query_ratio"],
        adaptive_pooling=p["adaptive_pooling"], grid_rows=p.get("height_width_set_by_driver"),
        schedule=schedule, **(extra if schedule == "end_of_video" else {}),
    )  # fmt: skip
    return InfiniPotVMemory(params, p["token_per_frame"], p["num_layers"])


def _append(llm: LLMState, mem: InfiniPotVMemory, kind: str, ks: list, vs: list) -> None:
    mem.before_prefill(llm, kind, ks[0].shape[2])
    for layer, (k, v) in enumerate(zip(ks, vs, strict=True)):
        llm.cache.update(k, v, layer)
    mem.after_encode(llm)


def check_stream(case: Case, schedule: str) -> dict[str, float]:
    p = need(case.meta, "params", where=case.name)
    t = case.tensors()
    chk = Checker(case, t, case.tolerance("tar_score", "van_score"))
    s, n_layers, kvh = p["system_size"], p["num_layers"], p["num_kv_heads"]
    mem, llm = _memory(p, schedule), LLMState(cache=DynamicCache())
    ids = [torch.zeros(kvh, 0, dtype=torch.long)] * n_layers  # stream index of every vision slot
    ops = need(case.meta, "ops", where=case.name)
    announced = False
    for i, op in enumerate(ops):
        ks = [t[f"layer{j}.op{i}.k"] for j in range(n_layers)]
        vs = [t[f"layer{j}.op{i}.v"] for j in range(n_layers)]
        tok = t[f"op{i}.token_ids"]
        chk.used(f"op{i}.position_ids", f"op{i}.token_ids")
        chk.used(*(f"layer{j}.op{i}.{x}" for j in range(n_layers) for x in ("k", "v", "k_pre_rope")))
        if op["includes_system"]:
            _append(llm, mem, "text", [k[:, :, :s] for k in ks], [v[:, :, :s] for v in vs])
            ks, vs = [k[:, :, s:] for k in ks], [v[:, :, s:] for v in vs]
        if not announced:
            mem.before_prefill(llm, "frames", ks[0].shape[2])
        for layer, (k, v) in enumerate(zip(ks, vs, strict=True)):
            llm.cache.update(k, v, layer)
        mem.after_encode(llm)
        ids = [torch.cat((x, tok[-ks[0].shape[2] :].expand(kvh, -1)), dim=1) for x in ids]
        announced = schedule == "causal" and i + 1 < len(ops)
        done = mem.compressions
        if announced:  # the next chunk arrives: the causal rule compresses before its prefill
            mem.before_prefill(llm, "frames", t[f"layer0.op{i + 1}.k"].shape[2])
        if op["compress"]:
            assert mem.compressions == done + (schedule == "causal"), f"{case.name}: op {i} did not compress"
            ids = _compared(chk, mem, i, ids)
        for layer in range(n_layers):
            pre = f"layer{layer}.op{i}."
            cache = llm.cache.layers[layer]
            chk.exact(pre + "cache_k", cache.keys)
            chk.exact(pre + "cache_v", cache.values)
            chk.exact(
                pre + "cache_token_ids", torch.cat((torch.arange(s).expand(kvh, -1), ids[layer]), dim=1)
            )
    assert mem.compressions == sum(op["compress"] for op in ops), case.name
    return chk.done()


def _compared(chk: Checker, mem: InfiniPotVMemory, op: int, ids: list) -> list:
    """The memory's last compression against op ``op``'s recorded one; the slots' ids gathered."""
    for layer, sel in enumerate(mem.last):
        pre = f"layer{layer}.op{op}."
        chk.exact(pre + "kept_vision_idx", sel.kept)
        chk.close(pre + "van_score", sel.van_score)
        if sel.tar_score is not None:
            chk.close(pre + "tar_score", sel.tar_score)
    return [torch.gather(x, 1, sel.kept) for x, sel in zip(ids, mem.last, strict=True)]


STREAM = {
    "causal": lambda c: check_stream(c, "causal"),
    "end_of_video": lambda c: check_stream(c, "end_of_video"),
}


@pytest.mark.parametrize("case", params("infinipot_v"))
def test_fixture_case(case: Case) -> None:
    run_case(
        case, case.kind, {"infinipot_v_step": check_step, "infinipot_v_stream": STREAM["causal"]}, "kind"
    )


@pytest.mark.parametrize("case", params("infinipot_v", {"infinipot_v_stream"}))
def test_fixture_stream_with_the_end_of_video_rule(case: Case) -> None:
    """The reference's own rule (needs the frame count) gives the same caches as the causal one."""
    run_case(case, case.kind, {"infinipot_v_stream": STREAM["end_of_video"]}, "kind")


# ------------------------------------------------------------------ properties
@PROPS
@given(
    frames=st.integers(2, 12),
    keep=st.integers(1, 11),
    tpf=st.integers(1, 6),
    tar=st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]),
    query=st.sampled_from([0.1, 0.25, 0.5]),
    seed=st.integers(0, 2**16),
)
def test_selection_keeps_the_recent_frames_and_the_budget_per_head(frames, keep, tpf, tar, query, seed):
    keep = min(keep, frames - 1)
    g = torch.Generator().manual_seed(seed)
    k, v = torch.randn(3, frames * tpf, 4, generator=g), torch.randn(3, frames * tpf, 4, generator=g)
    recent = int(frames * query) if tar > 0 else 0
    b = budgets(frames, keep, tpf, tar, query)
    if tar > 0 and (recent < 1 or b.past < 0):
        return  # refused at build time (Q5)
    sel = select(k, v, tpf, keep, tar, query)
    assert sel.kept.shape == (3, keep * tpf)
    for h in range(3):
        row = sel.kept[h].tolist()
        assert row == sorted(set(row)) and 0 <= row[0] and row[-1] < frames * tpf
        assert set(range((frames - recent) * tpf, frames * tpf)) <= set(row)  # recent frames kept
        if tar == 0:  # pure VaN: the largest value norms
            norms = v[h].norm(dim=-1)
            rest = [j for j in range(frames * tpf) if j not in row]
            assert norms[row].min() >= norms[rest].max()


def test_full_tar_with_all_recent_is_the_window_baseline():
    """tar_ratio 1 and int(N * q) = C: exactly the last C frames (the reference's `swa` baseline)."""
    k, v = torch.randn(2, 8 * 3, 4), torch.randn(2, 8 * 3, 4)
    sel = select(k, v, 3, 4, 1.0, 0.5)
    assert sel.kept.tolist() == [list(range(12, 24))] * 2


def test_pooling_groups_are_clamped_when_layers_are_not_a_multiple_of_four():
    """Q6: the reference indexes past its table for L = 5, 6; the last group here."""
    assert [pooling_of_layer(i, 6) for i in range(6)] == [(3, 7), (2, 5), (1, 3), (-1, 1), (-1, 1), (-1, 1)]
    assert [pooling_of_layer(i, 4)[0] for i in range(4)] == [3, 2, 1, -1]


# ------------------------------------------------------------------ parameters and build checks
def _build(tpf: int | None = 16, fpc: int = 1, by: str | None = None) -> KVBuild:
    layout = DecoderLayout((), "q", "k", "v", "o", 4, 2, 8, 1e4, "default", 4096)
    return KVBuild("llava_onevision", layout, tpf, by, fpc)


@pytest.mark.parametrize(
    "bad",
    [
        {"tar_ratio": 1.5},
        {"tar_ratio": -0.1},
        {"query_ratio": 0.0},
        {"budget_frames": 1},
        {"keep_frames": 4},
        {"schedule": "end_of_video", "keep_frames": 4},
        {"schedule": "end_of_video", "keep_frames": 40, "total_frames": 100},
    ],
)
def test_bad_parameters_are_field_errors(bad):
    with pytest.raises(ValidationError):
        InfiniPotVParams(**bad)


@pytest.mark.parametrize(
    ("params", "build", "error", "needle"),
    [
        ({}, _build(None, by="evs"), CompatibilityError, "'evs' keeps a data-dependent count"),
        ({"budget_frames": 4}, _build(fpc=4), BudgetError, "budget_frames = 4 does not exceed one chunk's 4"),
        ({"budget_frames": 4, "query_ratio": 0.2}, _build(fpc=1), BudgetError, "0 recent frames"),
        ({"budget_frames": 8, "tar_ratio": 0.1}, _build(fpc=2), BudgetError, "TaR share"),
        ({"adaptive_pooling": True, "grid_rows": 3}, _build(), BudgetError, "grid_rows = 3"),
    ],
)
def test_build_refuses_budgets_the_reference_crashes_on(params, build, error, needle):
    with pytest.raises(error, match=needle):
        InfiniPotV(**params).check_build(build)


def test_defaults_build_on_a_sixteen_token_frame():
    InfiniPotV().check_build(_build(fpc=8))
    InfiniPotV(schedule="end_of_video", keep_frames=24, total_frames=100).check_build(_build(fpc=8))


def test_run_summary_reports_compressions_and_dropped_tokens():
    from types import SimpleNamespace

    from tokencompress.cli.run_command import _kv_summary, _memory_text

    mem = InfiniPotVMemory(InfiniPotVParams(), 16, 2)
    mem.compressions, mem.dropped = 3, [96, 96]
    stream = SimpleNamespace(kv=mem, bound=SimpleNamespace(kv=InfiniPotV()), bytes_by_device=lambda: {})
    summary = _kv_summary(stream)
    assert summary["kv_memory"] == {"compressions": 3, "dropped_per_layer": [96, 96], "visual_frames": 0}
    assert _memory_text(summary["kv_memory"]) == "; 3 compressions, 96 tokens dropped per layer"
    assert _memory_text(None) == ""
