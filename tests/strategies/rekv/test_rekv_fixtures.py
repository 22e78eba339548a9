"""ReKV against the reference's golden cases: every case file found, dispatched on its ``kind``.

``rekv_retrieval`` cases check representatives, scores and top-k per layer; ``rekv_stream`` cases
feed every op (init, chunks, questions, prompt and decode steps) through one fresh
:class:`ReKVLayer` per layer and compare outputs, retrieved ids, kept KV and the counters the
sidecar records. Tolerances come from the sidecars; nothing about a case is hard-coded.
"""

from __future__ import annotations

import pytest
import torch

from tests.support.fixture_cases import Case, Checker, collect, need, params, run_case
from tokencompress.kernels.rope import inv_freq
from tokencompress.strategies.rekv.layer import ReKVLayer, ReKVSettings
from tokencompress.strategies.rekv.retrieval import (
    block_scores,
    expand_representatives,
    representatives,
    select_blocks,
)


def _tol(case: Case, key: str) -> dict[str, float]:
    return case.tolerance(key)


def _check_retrieval(case: Case) -> dict[str, float]:
    p = need(case.meta, "params", where=case.name)
    bs, topk, chunk = p["block_size"], p["topk"], p["retrieve_chunk_size"]
    tensors = case.tensors()
    check = Checker(case, tensors, _tol(case, "similarity"))
    for entry in need(case.meta, "per_layer", where=case.name):
        layer = entry["layer"]
        keys = tensors[f"layer{layer}.keys"][0]
        query = tensors[f"layer{layer}.query"][0]
        reps = representatives(keys, bs)
        n = reps.shape[0]
        assert n == p["n_blocks"], (
            f"{case.name}: layer {layer} keys hold {n} blocks, params say {p['n_blocks']}"
        )
        if f"layer{layer}.block_repr" in tensors:
            check.close(
                f"layer{layer}.block_repr",
                expand_representatives(reps, p["num_heads"]),
                **_tol(case, "block_repr"),
            )
        if f"layer{layer}.init_keys" in tensors:
            check.used(f"layer{layer}.init_keys")  # precedes the frames; never scored
        scores = block_scores(reps, query) if n > topk else None
        if f"layer{layer}.similarity" in tensors:
            assert scores is not None, f"{case.name}: layer {layer} scored by the reference but not here"
            check.close(f"layer{layer}.similarity", scores)
        else:
            assert scores is None, (
                f"{case.name}: layer {layer}: {n} blocks <= topk {topk} must come back unscored"
            )
        got = select_blocks(scores, n, topk, chunk).indices.tolist()
        acceptable = entry.get("acceptable_indices") or [entry["indices"]]
        assert got in acceptable, f"{case.name}: layer {layer} picked {got}, acceptable {acceptable}"
        assert tensors[f"layer{layer}.indices"].tolist() in acceptable
        check.used(f"layer{layer}.indices", f"layer{layer}.keys", f"layer{layer}.query")
    return check.done()


def _memory(case: Case, count_sinks_once: bool = False) -> ReKVLayer:
    p = need(case.meta, "params", where=case.name)
    settings = ReKVSettings(
        n_init=p["n_init"], n_local=p["n_local"], block_size=p["block_size"], topk=p["topk"],
        chunk_size=p["retrieve_chunk_size"], exc_block_size=p.get("exc_block_size"),
        count_sinks_once=count_sinks_once,
    )  # fmt: skip
    return ReKVLayer(
        settings, p["num_heads"], p["num_kv_heads"], p["head_dim"], inv_freq(p["head_dim"], p["rope_theta"])
    )


def _run_stream(case: Case, count_sinks_once: bool = False) -> tuple[Checker, dict[str, torch.Tensor]]:
    """Feed every op; returns the checker (outputs compared except on quirk rows when fixed) and our outputs."""
    p = need(case.meta, "params", where=case.name)
    tensors = case.tensors()
    check = Checker(case, tensors, _tol(case, "out"))
    ours: dict[str, torch.Tensor] = {}
    ops = need(case.meta, "ops", where=case.name)
    for layer in range(p["layers"]):
        mem = _memory(case, count_sinks_once)
        for i, op in enumerate(ops):
            key = f"layer{layer}.op{i}"
            q, k, v = (tensors[f"{key}.{x}"][0] for x in "qkv")
            check.used(f"{key}.q", f"{key}.k", f"{key}.v")
            want = op["per_layer"][layer]
            kind = op["op"]
            if kind in ("init", "chunk"):
                mem.end_answer()
                out = mem.encode(q, k, v)
                state = mem.state()
                for field, value in want.items():
                    assert state[field] == value, (
                        f"{case.name} {key}: {field} = {state[field]}, reference {value}"
                    )
            elif kind == "question":
                out, info = mem.question(q, k, v, op.get("external"))
                check.exact(f"{key}.retrieved", info.retrieved)
                if f"{key}.similarity" in tensors:
                    assert info.scores is not None, f"{case.name} {key}: the reference scored, we did not"
                    check.close(f"{key}.similarity", info.scores, **_tol(case, "similarity"))
                else:
                    assert info.scores is None, f"{case.name} {key}: scored where the reference did not"
                check.exact(f"{key}.kept_k", mem.answer_k[None])
                check.exact(f"{key}.kept_v", mem.answer_v[None])
                assert info.branch == want["branch"], (case.name, key, info.branch)
                assert info.kept_len == want["kept_len"], (case.name, key, info.kept_len)
                assert info.uses_sink_stage == want["uses_sink_stage"], (case.name, key)
                assert info.retrieved.tolist() == want["retrieved"], (case.name, key)
                if want.get("selection_margin") is not None:
                    assert info.margin == pytest.approx(want["selection_margin"], abs=1e-5), (case.name, key)
            elif kind in ("prompt", "decode"):
                assert mem.answer_k.shape[1] == want["cache_len_before"], (case.name, key)
                uses = mem.answer_k.shape[1] + q.shape[1] > p["n_local"]
                assert uses == want["uses_sink_stage"], (case.name, key)
                out = mem.answer(q, k, v)
                assert mem.answer_k.shape[1] == want["cache_len_after"], (case.name, key)
            else:
                pytest.fail(f"{case.name}: unknown op {kind!r}")
            ours[f"{key}.out"] = out[None]
            quirk = tensors.get(f"{key}.quirk_rows")
            if quirk is not None:
                check.used(f"{key}.quirk_rows")
            if count_sinks_once and quirk is not None:
                rows = ~quirk
                torch.testing.assert_close(out[rows], tensors[f"{key}.out"][0][rows], **_tol(case, "out"))
                check.used(f"{key}.out")
            else:
                check.close(f"{key}.out", out[None])
        reps = expand_representatives(mem.store.reps, p["num_heads"])
        check.close(
            f"layer{layer}.final.block_repr",
            reps,
            **_tol(case, "block_repr")
            if "block_repr" in case.meta["tolerances"]
            else {"atol": 1e-6, "rtol": 0.0},
        )
        check.exact(f"layer{layer}.final.init_k", mem.sink_k[:, : mem.loaded][None])
        check.exact(f"layer{layer}.final.local_k", mem.win_k[None])
    return check, ours


def _check_stream(case: Case) -> dict[str, float]:
    check, _ = _run_stream(case)
    return check.done()


CHECKS = {"rekv_retrieval": _check_retrieval, "rekv_stream": _check_stream}


@pytest.mark.parametrize("case", params("rekv"))
def test_rekv_fixture(case: Case) -> None:
    run_case(case, case.kind, CHECKS, "kind")


@pytest.mark.parametrize("case", params("rekv", {"rekv_stream"}))
def test_rekv_counting_sinks_once_changes_only_quirk_rows(case: Case) -> None:
    """The Q3 fix (``count_sinks_once``) agrees on every unflagged row and changes flagged ones."""
    check, ours = _run_stream(case, count_sinks_once=True)
    check.done()
    tensors = case.tensors()
    flagged = [k for k, t in tensors.items() if k.endswith(".quirk_rows") and t.any()]
    if not flagged:
        pytest.skip(f"{case.name} flags no quirk rows")
    moved = 0.0
    for k in flagged:
        out = k.replace("quirk_rows", "out")
        rows = tensors[k]
        moved = max(moved, (ours[out][0][rows] - tensors[out][0][rows]).abs().max().item())
    assert moved > 1e-4, f"{case.name}: counting sinks once changed no flagged row ({moved:.2g})"


def test_rekv_cases_are_found() -> None:
    kinds = {c.kind for c in collect("rekv")}
    assert {"rekv_retrieval", "rekv_stream"} <= kinds, kinds
