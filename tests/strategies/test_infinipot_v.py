"""InfiniPot-V: reference fixtures (the authors' process_kv_cache and block driver), the causal and
end-of-video schedules, selection properties and parameter errors. One test per fixture case file,
dispatched on its ``kind``; cases from ``$TOKENCOMPRESS_EXTRA_FIXTURES/infinipot_v/`` too."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, settings
from transformers import DynamicCache

from tests.support.fixture_cases import Case, Checker, need, params, run_case
from tokencompress.api.target import LLMState
from tokencompress.strategies.infinipot_v import InfiniPotVMemory, InfiniPotVParams
from tokencompress.strategies.infinipot_v_select import pooling_of_layer, select

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
        ks = [t[f"layer{l}.op{i}.k"] for l in range(n_layers)]
        vs = [t[f"layer{l}.op{i}.v"] for l in range(n_layers)]
        tok = t[f"op{i}.token_ids"]
        chk.used(f"op{i}.position_ids", f"op{i}.token_ids")
        chk.used(*(f"layer{l}.op{i}.{x}" for l in range(n_layers) for x in ("k", "v", "k_pre_rope")))
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
