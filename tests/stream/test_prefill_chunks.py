"""``stream.prefill_chunks``: the kept tokens of several chunks prefilled in one decoder call land in
the cache exactly as chunk-by-chunk prefills put them.

Checked on the tiny LLaVA-OV (1-D positions), Qwen2-VL (M-RoPE from frame indices and grids)
and Qwen3-VL (per-slice timestamp text, DeepStack features at the visual rows), with and without
a count-changing pruner: same cache length, positions, visual token count, per-layer keys and
values, and first-answer logits. Tolerance: one decoder call over ``[A; B]`` sums in another
order than two calls; measured differences are <= 3e-7, the bound used is 1e-4 (logits) and
1e-5 (cache).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.stream.test_transactions import build as build_injecting
from tests.stream.test_transactions import same_stream
from tests.support.models import random_frames
from tests.support.pipelines import pipeline
from tokencompress import Pipeline
from tokencompress.api.errors import CompatibilityError, PluginFault
from tokencompress.api.target import Target
from tokencompress.models.tokenizer import byte_tokenizer
from tokencompress.targets.qwen.qwen2_vl import Qwen2VLTarget
from tokencompress.targets.qwen.qwen3_vl import Qwen3VLTarget

LOGITS_TOL = {"atol": 1e-4, "rtol": 0.0}
CACHE_TOL = {"atol": 1e-5, "rtol": 0.0}
QUESTION = torch.tensor([21, 22, 23])
PRUNER = {"pre_prefill": [{"strategy": "stc_pruner", "tokens_per_frame": 5}]}
QWEN_SMALL = {"qwen2_vl": {"max_pixels": 112 * 112}, "qwen3_vl": {"max_pixels": 128 * 128}}
_MODELS: dict[str, torch.nn.Module] = {}


def model(name: str, tiny_llava_ov: Any) -> torch.nn.Module:
    if name == "llava_onevision":
        return tiny_llava_ov
    if name not in _MODELS:
        _MODELS[name] = {"qwen2_vl": Qwen2VLTarget, "qwen3_vl": Qwen3VLTarget}[name].tiny_model(seed=1)
    return _MODELS[name]


def prefill_grouped(target: str, k: int, stages: dict | None = None, fpc: int = 1) -> Pipeline:
    """``target``'s pipeline with ``k`` chunks prefilled per decoder call (Qwen at its small size)."""
    stream = {"fps": 2, "prefill_chunks": k}
    return pipeline(stages, fpc, stream=stream, target=target, target_options=QWEN_SMALL.get(target, {}))


def streamed(pipe: Pipeline, net: torch.nn.Module, chunks: Any, tokenizer: Any = None) -> dict[str, Any]:
    """Prefix, the chunks (one ``add_frames`` call each), a question: what the cache and the answer hold."""
    with pipe.apply(net) as bound:
        s = bound.stream(tokenizer=tokenizer)
        s.llm.position_log = []  # every prefill's positions, in order
        s.prefill_ids(torch.tensor([11, 12, 13]))
        waiting = []
        for c in chunks:
            s.add_frames(c)
            waiting.append(s.waiting_chunks)
        answer = s.ask(QUESTION, max_new_tokens=2)
        return {
            "length": s.llm.length,
            "next_position": s.llm.next_position,
            "visual": s.llm.visual_tokens,
            "positions": torch.cat(s.llm.position_log[:-2], dim=-1),  # without the question and answer
            "layers": [(layer.keys, layer.values) for layer in s.llm.cache.layers],
            "logits": answer.first_logits,
            "tokens": answer.token_ids,
            "waiting": waiting,
            "history": list(s.history),
        }


def assert_same_stream(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert (a["length"], a["next_position"], a["visual"]) == (b["length"], b["next_position"], b["visual"])
    assert torch.equal(a["positions"], b["positions"])
    for (ka, va), (kb, vb) in zip(a["layers"], b["layers"], strict=True):
        torch.testing.assert_close(ka, kb, **CACHE_TOL)
        torch.testing.assert_close(va, vb, **CACHE_TOL)
    torch.testing.assert_close(a["logits"], b["logits"], **LOGITS_TOL)
    assert [h.pre_prefill for h in a["history"]] == [h.pre_prefill for h in b["history"]]


CASES = [
    ("llava_onevision", 1, None),
    ("qwen2_vl", 2, None),
    ("qwen3_vl", 2, byte_tokenizer("qwen2_vl")),  # timestamps text inside every slice group
]


@pytest.mark.parametrize("stages", [None, PRUNER], ids=["no-strategy", "stc_pruner"])
@pytest.mark.parametrize(("target", "fpc", "tokenizer"), CASES, ids=[c[0] for c in CASES])
def test_grouped_prefill_places_tokens_as_chunk_by_chunk(tiny_llava_ov, target, fpc, tokenizer, stages):
    frames = random_frames(7 * fpc, seed=5)
    chunks = [frames[i : i + fpc] for i in range(0, len(frames), fpc)]
    net = model(target, tiny_llava_ov)
    one = streamed(prefill_grouped(target, 1, stages, fpc), net, chunks, tokenizer)
    three = streamed(prefill_grouped(target, 3, stages, fpc), net, chunks, tokenizer)
    assert_same_stream(one, three)
    assert three["waiting"] == [1, 2, 0, 1, 2, 0, 1] and one["waiting"] == [0] * 7
    # 7 chunks in groups of 3: chunks 2 and 5 prefill a group, ask() closes the short last one
    assert [h.prefilled_chunks for h in three["history"]] == [0, 0, 3, 0, 0, 3, 1]
    assert [h.prefill_ms == 0 for h in three["history"]] == [True, True, False, True, True, False, False]


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    chunks=st.integers(1, 5),
    k=st.integers(2, 4),
    asks=st.sets(st.integers(0, 4), max_size=3),
    prune=st.booleans(),
)
def test_answers_equal_the_ungrouped_stream_wherever_questions_come(tiny_llava_ov, chunks, k, asks, prune):
    """Questions between chunks close the waiting group early; every answer, and the cache after the
    last chunk, equal a stream that prefills chunk by chunk; no more than k - 1 chunks ever wait."""
    frames = random_frames(chunks, seed=chunks + 10 * k)
    stages = PRUNER if prune else None
    out = []
    for group in (1, k):
        with prefill_grouped("llava_onevision", group, stages).apply(tiny_llava_ov) as bound:
            s = bound.stream()
            answers, waits = [], []
            for i in range(chunks):
                s.add_frames(frames[i : i + 1])
                waits.append(s.waiting_chunks)
                if i in asks:
                    answers.append(s.ask(QUESTION, max_new_tokens=1).first_logits)
                    assert s.waiting_chunks == 0
            s.flush()
            layers = [(layer.keys.clone(), layer.values.clone()) for layer in s.llm.cache.layers]
            state = (s.llm.length, s.llm.next_position, s.llm.visual_tokens, s.chunks_done)
            out.append((answers, layers, state, waits, [h.prefilled_chunks for h in s.history]))
    (a1, l1, s1, _, _), (ak, lk, sk, waits, carried) = out
    assert s1 == sk and max(waits) <= k - 1
    assert sum(carried) == chunks  # every chunk's tokens were carried by exactly one prefill
    for x, y in zip(a1, ak, strict=True):
        torch.testing.assert_close(x, y, **LOGITS_TOL)
    for (k1, v1), (k2, v2) in zip(l1, lk, strict=True):
        torch.testing.assert_close(k1, k2, **CACHE_TOL)
        torch.testing.assert_close(v1, v2, **CACHE_TOL)


# ------------------------------------------------------------ transactions
def grouped(arm: dict[str, Any], k: int) -> Pipeline:
    base = build_injecting(arm, 1)
    stream = base.config.stream.model_copy(update={"prefill_chunks": k})
    return Pipeline(type(base.config)(**{**base.config.__dict__, "stream": stream}), base.registry)


def same_waiting(a: Any, b: Any) -> None:
    assert a.waiting_chunks == b.waiting_chunks
    for x, y in zip(a._waiting, b._waiting, strict=True):
        assert torch.equal(x.embeds, y.embeds) and torch.equal(x.positions, y.positions)
        assert x.visual == y.visual


@pytest.mark.parametrize("where", ["group", "pre_prefill", "flush"])
def test_a_failed_group_prefill_leaves_earlier_chunks_waiting(tiny_llava_ov, monkeypatch, where) -> None:
    """The chunk that triggers the group prefill fails after the cache moved: the stream is as
    before that chunk (the earlier chunks still wait, their vision work kept), and the next chunk
    runs the group as on a stream that never saw the failed one."""
    arm: dict[str, Any] = {"error": RuntimeError}
    frames = random_frames(4, seed=2)
    with grouped(arm, 3).apply(tiny_llava_ov) as bound:
        real = bound.target.prefill_segments

        def prefill_segments(llm, segments):
            real(llm, segments)  # the cache has moved when the failure comes
            if arm.get("where") == "group":
                arm["where"] = None
                raise RuntimeError("injected failure")

        monkeypatch.setattr(bound.target, "prefill_segments", prefill_segments)
        failed, clean = bound.stream(), bound.stream()
        for s in (failed, clean):
            assert [c.prefilled_chunks for c in s.add_frames(frames[:2])] == [0, 0]
        arm["where"] = "group" if where == "flush" else where
        with pytest.raises(PluginFault) as exc:
            if where == "flush":
                failed.flush()  # closes the short group of chunks 0-1
            else:
                failed.add_frames(frames[2:3])
        assert arm["where"] is None and "injected failure" in str(exc.value)
        assert f"chunk {1 if where == 'flush' else 2}" in str(exc.value)
        same_stream(failed, clean)
        same_waiting(failed, clean)
        assert failed.waiting_chunks == 2 and failed.llm.length == clean.llm.length
        after = [s.add_frames(frames[2:3]) for s in (failed, clean)]
        assert [c.prefilled_chunks for c in after[0]] == [c.prefilled_chunks for c in after[1]] == [3]
        same_stream(failed, clean)
        for s in (failed, clean):
            s.add_frames(frames[3:4])
        assert torch.equal(failed.ask(QUESTION, 1).first_logits, clean.ask(QUESTION, 1).first_logits)


def test_the_position_guard_counts_waiting_tokens(tiny_llava_ov) -> None:
    """A chunk past the position limit is refused when it completes, not when its group prefills."""
    with prefill_grouped("llava_onevision", 4).apply(tiny_llava_ov) as bound:
        s = bound.stream()
        s.add_frames(random_frames(1))
        limit = s.llm.next_position + 16  # room for exactly one more 16-token chunk
        s.guard.limit, s.guard.active, s.guard.warned = limit, True, True
        s.add_frames(random_frames(1, seed=1))
        assert (s.waiting_chunks, s.llm.next_position, s.llm.length) == (2, limit, 0)
        with pytest.raises(Exception, match="chunk 2"):
            s.add_frames(random_frames(1, seed=2))
        assert (s.waiting_chunks, s.llm.next_position) == (2, limit)


def test_reset_drops_waiting_tokens(tiny_llava_ov) -> None:
    with prefill_grouped("llava_onevision", 3).apply(tiny_llava_ov) as bound:
        s = bound.stream()
        s.add_frames(random_frames(2))
        assert s.waiting_chunks == 2 and s.llm.next_position == 32
        s.reset()
        assert (s.waiting_chunks, s.llm.next_position, s.llm.length) == (0, 0, 0)


# ------------------------------------------------------------ refusals
@pytest.mark.parametrize("strategy", ["sliding_window", "rekv"])
def test_kv_cache_strategies_refuse_grouped_prefill(tiny_llava_ov, strategy) -> None:
    pipe = Pipeline.from_dict(
        {"stream": {"prefill_chunks": 2}, "stages": {"kv_cache": [{"strategy": strategy}]}}
    )
    with pytest.raises(CompatibilityError) as exc:
        pipe.bind(tiny_llava_ov)
    msg = str(exc.value)
    assert "stream.prefill_chunks = 2" in msg and strategy in msg and "set stream.prefill_chunks: 1" in msg


def test_a_target_without_segments_refuses_grouped_prefill(tiny_llava_ov) -> None:
    """A target with its own prefill_visual and no visual_segment cannot group exactly: refused."""
    from tokencompress.targets.llava.llava_onevision import LlavaOnevisionTarget

    class OwnPrefill(LlavaOnevisionTarget):
        def prefill_visual(self, state, tokens):  # pragma: no cover - never reached
            return Target.prefill_visual(self, state, tokens)

    from tokencompress.api.prefill_segment import check_prefill_grouping
    from tokencompress.api.types import StreamConfig

    target = OwnPrefill(tiny_llava_ov)
    check_prefill_grouping(StreamConfig(prefill_chunks=1), target, [])
    with pytest.raises(CompatibilityError, match="offers no visual_segment"):
        check_prefill_grouping(StreamConfig(prefill_chunks=2), target, [])


# ------------------------------------------------------------------- CLI
TINY_PRUNER = "stages:\n  pre_prefill:\n    - {strategy: stc_pruner, tokens_per_frame: 8}\n"


def test_run_flag_overrides_the_pipeline(tmp_path, capsys, tiny_checkpoint) -> None:
    from tokencompress.cli.main import main

    pipe = tmp_path / "p.yaml"
    pipe.write_text(TINY_PRUNER)
    out = tmp_path / "run.json"
    argv = ["run", str(pipe), "--model", str(tiny_checkpoint), "--max-frames", "5", "--no-progress"]
    assert main([*argv, "--prefill-chunks", "2", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "tokens of 2 chunks prefilled together" in printed
    payload = json.loads(out.read_text())
    assert payload["pipeline"]["stream"]["prefill_chunks"] == 2
    # the end of the stream closes the short last group: its chunk's entry carries it
    assert [c["prefilled_chunks"] for c in payload["chunks"]] == [0, 2, 0, 2, 1]
    assert all((c["prefill_ms"] == 0) == (c["prefilled_chunks"] == 0) for c in payload["chunks"])
    assert payload["summary"]["mean_prefill_ms"] > 0
    assert main([*argv, "--prefill-chunks", "0"]) == 2
    assert "--prefill-chunks must be >= 1, got 0" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_runs_the_baseline_with_the_same_setting(tmp_path, capsys, tiny_checkpoint) -> None:
    from tokencompress.cli.main import main

    pipe = tmp_path / "pr.yaml"
    pipe.write_text("name: pr\n" + TINY_PRUNER)
    out = tmp_path / "out"
    argv = ["bench", str(pipe), "--model", str(tiny_checkpoint), "--max-frames", "4", "--repeats", "1"]
    assert main([*argv, "--warmup", "0", "--prefill-chunks", "2", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "median per 2-chunk group" in printed and "prefilled 2 at a time" in printed
    saved = json.loads((out / "pr.json").read_text())
    assert saved["prefill_chunks"] == 2
    for side in ("baseline", "pipeline"):
        assert saved[side]["config"]["stream"]["prefill_chunks"] == 2
        assert [c["prefilled_chunks"] for c in saved[side]["chunks"]] == [0, 2, 0, 2]
        assert [c["prefill_ms"] > 0 for c in saved[side]["chunks"]] == [False, True, False, True]
    assert any("baseline and pipeline alike" in n for n in saved["notes"])
    assert saved["spreads"]["prefill_ms"]["median"] > 0


def test_yaml_and_schema_carry_the_setting(tmp_path, capsys) -> None:
    from tokencompress.cli.main import main

    good = tmp_path / "good.yaml"
    good.write_text("stream: {prefill_chunks: 4}\n")
    assert main(["validate", str(good), "--no-model"]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("stream: {prefill_chunks: 0}\n")
    assert main(["validate", str(bad), "--no-model"]) == 2
    assert "stream.prefill_chunks" in capsys.readouterr().err
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    text = json.dumps(schema)
    assert '"prefill_chunks"' in text and '"minimum": 1' in text
