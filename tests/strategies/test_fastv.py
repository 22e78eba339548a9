"""FastV and PyramidDrop: the reference fixtures (the authors' code run on CPU), one test per case file,
dispatched on its ``kind``; cases from ``$TOKENCOMPRESS_EXTRA_FIXTURES/fastv/`` too.

Step kinds run the ranking functions; stream kinds run a stock transformers ``LlamaModel`` built
from the case's weights under the in_decoder hooks (:class:`~tokencompress.patching.in_decoder.InDecoderPatch`),
with sdpa and with eager attention, and compare what every layer is handed (positions, lengths),
the per-layer cache lengths, the ranking intermediates and the final hidden states.
"""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from tests.support.fixture_cases import Case, Checker, need, params, parse_tolerance, run_case
from tests.support.in_decoder import layer_lengths, patched, record_positions, tiny_llama
from tokencompress.api.in_decoder import Span
from tokencompress.strategies.fastv import FastV, rank_attention_row
from tokencompress.strategies.pdrop import PyramidDrop, rank_step


def _selection_ok(case: Case, chk: Checker, kept: torch.Tensor, length: int, start: int, n: int) -> None:
    """Exact, or (ties) any listed alternative with keep_indices and mask_keep consistent with it."""
    alts = case.meta.get("acceptable_alternatives")
    if alts is None:
        chk.exact("visual_kept", kept)
        return
    allowed = alts["visual_kept_alternatives"]
    assert kept.tolist() in allowed, f"{case.name}: {kept.tolist()} not in {allowed}"
    visible = torch.ones(length, dtype=torch.bool)
    visible[start : start + n] = False
    visible[kept] = True
    assert set(alts["must_keep"]) <= set(kept.tolist()), case.name
    chk.used("visual_kept", "keep_indices", "mask_keep")
    assert torch.nonzero(visible).flatten().tolist() == sorted(
        set(range(length)) - set(range(start, start + n)) | set(kept.tolist())
    )


def check_fastv_step(case: Case) -> dict[str, float]:
    p = need(case.meta, "params", where=case.name)
    t = case.tensors()
    chk = Checker(case, t, case.tolerance("scores"))
    length, start, n, k = p["seq_len"], p["visual_start"], p["visual_len"], p["keep"]
    assert FastV(ratio=1 - k / n).keep(n, 0) == k, case.name
    got = rank_attention_row(t["attn"][0, :, length - 1], start, n, k)
    chk.used("attn")
    chk.close("scores", got["scores"])
    _selection_ok(case, chk, got["visual_kept"], length, start, n)
    if "acceptable_alternatives" not in case.meta:
        chk.exact("keep_indices", got["keep_indices"])
        chk.exact("mask_keep", got["mask_keep"])
    return chk.done()


def check_pdrop_step(case: Case) -> dict[str, float]:
    p = need(case.meta, "params", where=case.name)
    t = case.tensors()
    chk = Checker(case, t, case.tolerance("scores"))
    stage, n0 = p["stage"], p["original_visual_len"]
    ratios = p["image_token_ratio_list"]
    strategy = PyramidDrop(layer_list=p["layer_list"], ratios=ratios[1:])
    n, k = strategy_count(strategy, n0, stage - 1), strategy_count(strategy, n0, stage)
    assert (n, k) == (p["visual_len"], p["keep"]), case.name
    model = tiny_llama({**p, "num_layers": 1}, None)
    layer = model.layers[0]
    with torch.no_grad():
        layer.input_layernorm.weight.copy_(t["weight.input_layernorm.weight"])
        layer.self_attn.q_proj.weight.copy_(t["weight.q_proj.weight"])
        layer.self_attn.k_proj.weight.copy_(t["weight.k_proj.weight"])
    pos = t["position_ids"][None]
    pe = model.rotary_emb(t["features"], pos)
    with torch.no_grad():
        got = rank_step(t["features"], layer, pe, p["visual_start"], n, k, p["num_heads"], p["num_kv_heads"])
    chk.used("features", "position_ids", *[k for k in t if k.startswith("weight.")])
    qk = case.tolerance("q_last/k")
    chk.close("q_last", got["q_last"], **qk)
    chk.close("k", got["k"], **qk)
    chk.close("attn_row", got["attn_row"], **case.tolerance("attn_row"))
    chk.close("scores", got["scores"])
    for key in ("kept_local", "keep_indices", "new_position_ids"):
        chk.exact(key, got[key])
    chk.exact("new_features", t["features"][:, got["keep_indices"]])
    return chk.done()


def strategy_count(strategy: PyramidDrop, n: int, boundary: int) -> int:
    return n if boundary < 0 else strategy.keep(n, boundary)


# ------------------------------------------------------------------ streams
def _op_input(t: dict, i: int, op: str, seq: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    if op == "prefill":
        return seq, torch.arange(seq.shape[1])[None]
    if op == "prefill_nocache":
        return seq, torch.arange(seq.shape[1])[None]
    return t[f"op{i}.new_embeds"], torch.tensor([[total]])


def _stream(case: Case, strategy, attn: str, checker) -> dict[str, float]:  # noqa: ANN001
    p = need(case.meta, "params", where=case.name)
    ops = need(case.meta, "ops", where=case.name)
    t = case.tensors()
    chk = Checker(case, t, case.tolerance("last_hidden_state"))
    chk.used("inputs_embeds", *[k for k in t if k.startswith("weight.")])
    model = tiny_llama(p, t, attn)
    start, n = p["visual_start"], p["visual_len"]
    cached = p.get("variant") != "inplace"
    cache = DynamicCache(config=model.config) if cached else None
    seq, total = t["inputs_embeds"], 0
    state = strategy.new_decoder_state(p["num_layers"])
    with patched(model, strategy) as patch:
        for i, info in enumerate(ops):
            op = info["op"]
            if op == "prefill_nocache":
                seq = torch.cat([seq, t[f"op{i}.new_embeds"]], dim=1)
                chk.used(f"op{i}.new_embeds")
            x, pos = _op_input(t, i, op, seq, total)
            rows = torch.arange(start, start + n)
            spans = [Span(rows, (0, x.shape[1]), n)] if op != "decode" else []
            if op == "decode" and strategy.mode == "mask":  # the reference re-ranks its span at every step
                spans, state = [Span(rows - total, (0, 1), n)], strategy.new_decoder_state(p["num_layers"])
            if op == "decode":
                chk.used(f"op{i}.new_embeds")
            mask = torch.ones(1, total + x.shape[1], dtype=torch.long) if op == "decode" else None
            with patch.scope(state, spans), record_positions(model) as seen:
                out = model(
                    inputs_embeds=x, position_ids=pos, cache=cache, use_cache=cached, attention_mask=mask
                )
            run = patch.last_run()
            pre = f"op{i}."
            for layer, want in enumerate(info["per_layer"]):
                assert seen[layer].numel() == want["seq_len"], (case.name, i, layer)
                chk.exact(f"{pre}layer{layer}.position_ids", seen[layer])
            if "cache_len_after" in info:
                assert layer_lengths(cache) == info["cache_len_after"], (case.name, i)
            chk.close(pre + "last_hidden_state", out.last_hidden_state)
            checker(case, chk, pre, run, info)
            total = total + x.shape[1] if cached else seq.shape[1]
    return chk.done()


def _fastv_op(case: Case, chk: Checker, pre: str, run, info: dict) -> None:  # noqa: ANN001
    if pre + "rank_scores" not in chk.expected:
        return
    score_tol = case.tolerance("rank_attn_last_row/rank_scores/attn_row/scores")
    record = run.records[0]
    chk.close(pre + "rank_attn_last_row", record.heads[0][:, 0], **score_tol)
    span = run.spans[0] if run.strategy.mode == "mask" else None
    p = case.meta["params"]
    rows = torch.arange(p["visual_start"], p["visual_start"] + p["visual_len"])
    cols = rows if span is None else span.rows + record.offset
    chk.close(pre + "rank_scores", record.scores(0)[cols], **score_tol)
    kept = run.kept[0]
    if run.strategy.mode == "mask":
        chk.exact(pre + "visual_kept", kept + run.past0)
        chk.exact(pre + "mask_keep", ~run.hidden_cols)
    else:
        chk.exact(pre + "keep_indices", kept)
        chk.exact(pre + "visual_kept", kept[(kept >= rows[0]) & (kept <= rows[-1])])
    assert len(run.selected[0][0]) == info["kept"], case.name


def _documented_tolerance(case: Case, key: str) -> dict[str, float]:
    """A tolerance mapping whose ``why`` says where it comes from (read as the fixture README states it)."""
    spec = dict(need(case.meta, "tolerances", key, where=case.name))
    assert isinstance(spec.pop("why", ""), str), case.name
    return parse_tolerance(spec)


def _pdrop_op(case: Case, chk: Checker, pre: str, run, info: dict) -> None:  # noqa: ANN001
    stages = info.get("stages")
    if not stages:
        assert not run.records, case.name
        return
    score_tol = case.tolerance("rank_attn_last_row/rank_scores/attn_row/scores")
    inter = _documented_tolerance(case, "stage hidden_in/q_last/k (PDrop intermediates)")
    p = case.meta["params"]
    model_layers = run.stack.layers
    for s, want in enumerate(stages):
        key = f"{pre}stage{s}."
        hidden, pos = run.inputs[s]
        assert hidden.shape[1] == want["seq_len_in"], (case.name, s)
        chk.close(key + "hidden_in", hidden, **inter)
        chk.exact(key + "position_ids", pos.reshape(-1))
        record = run.records[s]
        chk.close(key + "attn_row", record.heads[0][:, 0], **score_tol)
        start, n = p["visual_start"], want["visual_len_in"]
        chk.close(key + "scores", record.scores(0)[start : start + n], **score_tol)
        local = run.selected[s][0]
        assert local.numel() == want["keep"], (case.name, s)
        chk.exact(key + "kept_local", local)
        keep = torch.cat([torch.arange(start), local + start, torch.arange(start + n, want["seq_len_in"])])
        chk.exact(key + "keep_indices", keep)
        chk.exact(key + "orig_indices", run.kept[s])
        pe = run.stack.rotary(hidden, pos)
        step = rank_step(
            hidden,
            model_layers[want["rank_layer"]],
            pe,
            start,
            n,
            want["keep"],
            p["num_heads"],
            p["num_kv_heads"],
        )
        chk.close(key + "q_last", step["q_last"], **inter)
        chk.close(key + "k", step["k"], **inter)
        assert torch.equal(step["kept_local"], local), (case.name, s)


def check_fastv_stream(case: Case, attn: str = "sdpa") -> dict[str, float]:
    p = need(case.meta, "params", where=case.name)
    n, k = p["visual_len"], p["keep"]
    strategy = FastV(layer=p["K"], ratio=1 - k / n, mode="mask" if p["variant"] == "mask" else "drop")
    assert strategy.keep(n, 0) == k, case.name
    return _stream(case, strategy, attn, _fastv_op)


def check_pdrop_stream(case: Case, attn: str = "sdpa") -> dict[str, float]:
    p = need(case.meta, "params", where=case.name)
    strategy = PyramidDrop(layer_list=p["layer_list"], ratios=p["image_token_ratio_list"][1:])
    n = p["visual_len"]
    assert list(strategy.planned_keep(n, p["num_layers"])) == p["keeps"], case.name
    return _stream(case, strategy, attn, _pdrop_op)


CHECKS = {
    "fastv_step": check_fastv_step,
    "pdrop_step": check_pdrop_step,
    "fastv_stream": check_fastv_stream,
    "pdrop_stream": check_pdrop_stream,
}


@pytest.mark.parametrize("case", params("fastv"))
def test_fixture_case(case: Case) -> None:
    run_case(case, case.kind, CHECKS, "kind")


@pytest.mark.parametrize("case", params("fastv", {"fastv_stream", "pdrop_stream"}))
def test_fixture_stream_under_eager_attention(case: Case) -> None:
    """The ranking reads q and k, not the implementation's weights: eager gives the same result."""
    check = {"fastv_stream": check_fastv_stream, "pdrop_stream": check_pdrop_stream}[case.kind]
    check(case, attn="eager")
