"""Chunks are transactions: a failure anywhere inside one leaves the stream as if it never came.

The property injects a failure (an exception from plugin code, or Ctrl-C) at a random encoder
layer, token stage or the LLM prefill of a random chunk, after the Cacher's counter, the
Pruner's memory and (for the prefill) some cache layers have already moved. The stream must
then equal, field by field and tensor by tensor, a stream that never saw that chunk, and the
next chunk and a question must give bit-identical results on both.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.support.models import random_frames
from tests.support.plugin_fakes import plugin
from tokencompress import BlockStrategy, Pipeline, Registry, Stage, TokenStrategy, VideoError
from tokencompress.api.errors import PluginFault
from tokencompress.strategies.rekv.store import BlockStore

EXAMPLES = 5
LAYERS = 2  # the tiny LLaVA-OV's vision tower depth


def injectors(arm: dict[str, Any]) -> list[type]:
    """Strategies that do nothing until armed, then raise ``arm['error']`` at ``arm['where']``."""

    def fire(where: str) -> None:
        if arm.get("where") == where:
            arm["where"] = None
            raise arm["error"]("injected failure")

    class InjectBlock(BlockStrategy):
        name = "inject_block"

        def block_forward(self, call, hidden, run_next):
            fire(f"layer:{call.layer_index}")
            return run_next(hidden)

    def token(stage: Stage) -> type:
        def apply(self, tokens, state, chunk):
            fire(stage.value)
            return tokens

        attrs = {"name": f"inject_{stage.value}", "stage": stage, "changes_count": False, "apply": apply}
        return type(f"Inject_{stage.value}", (TokenStrategy,), attrs)

    return [InjectBlock, token(Stage.POST_VIT), token(Stage.PRE_PREFILL)]


SMALL_MEMORY = {
    "rekv": {"n_local": 12, "topk": 2},
    "sliding_window": {"n_local": 12},
    "infinipot_v": {"budget_frames": 3, "query_ratio": 0.5, "tar_ratio": 1.0},
}
"""Windows of two pruned frames (6 tokens each), so the few chunks of an example roll the window
and offload blocks; a kv_cache strategy missing here runs with its ``conformance_params``."""


def kv_strategies() -> list[str | None]:
    """None (no memory) and every kv_cache strategy the registry holds, built-in or installed."""
    return [None, *sorted(n for n, r in Registry().strategies.items() if r.cls.stage is Stage.KV_CACHE)]


def kv_step(name: str) -> dict[str, Any]:
    if name in SMALL_MEMORY:
        return {"strategy": name, **SMALL_MEMORY[name]}
    cls = Registry().strategy(name)
    return {"strategy": name, **cls.conformance_params(SimpleNamespace(tokens_per_frame=6))}


def build(arm: dict[str, Any], fpc: int, kv: str | None = None) -> Pipeline:
    reg = Registry(plugins=[plugin("pkg-inject", injectors(arm))])
    stages = {
        "pre_vit_block": [
            {"strategy": "inject_block"},
            {"strategy": "stc_cacher", "update_token_ratio": 0.25, "cache_interval": 2},
        ],
        "post_vit": [{"strategy": "inject_post_vit"}],
        "pre_prefill": [
            {"strategy": "stc_pruner", "tokens_per_frame": 6},
            {"strategy": "inject_pre_prefill"},
        ],
    }
    if kv is not None:
        stages["kv_cache"] = [kv_step(kv)]
    return Pipeline.from_dict({"stages": stages, "stream": {"frames_per_chunk": fpc}}, reg)


def same(a: Any, b: Any, path: str = "state") -> None:
    """Deep equality with tensors compared exactly (values, dtype, shape); the project's own objects
    (kv_cache memories and their layers) field by field, a block store by its stored blocks."""
    if isinstance(a, BlockStore):
        assert type(b) is BlockStore and len(a) == len(b), path
        ids = torch.arange(len(a))
        same(a.gather(ids), b.gather(ids), f"{path}.blocks")
        same(a.reps, b.reps, f"{path}.reps")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), path
    elif dataclasses.is_dataclass(a) and not isinstance(a, type):
        assert type(a) is type(b), path
        for f in dataclasses.fields(a):
            same(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{path}[{i}]")
    elif type(a).__module__.startswith("tokencompress.") and hasattr(a, "__dict__"):
        assert type(a) is type(b), path
        same(vars(a), vars(b), f"{path}.")
    else:
        assert a == b, (path, a, b)


def same_stream(a: Any, b: Any) -> None:
    same(a.states, b.states)
    for k in ("chunks_done", "frames_seen", "token_frames_seen", "_prefixed"):
        assert getattr(a, k) == getattr(b, k), k
    same(a._pending, b._pending, "pending")
    assert (a.llm.length, a.llm.next_position, a.llm.visual_tokens) == (
        b.llm.length,
        b.llm.next_position,
        b.llm.visual_tokens,
    )
    for i, (la, lb) in enumerate(zip(a.llm.cache.layers, b.llm.cache.layers, strict=True)):
        assert la.get_seq_length() == lb.get_seq_length(), f"cache layer {i}"
        if la.get_seq_length():
            assert torch.equal(la.keys, lb.keys) and torch.equal(la.values, lb.values), f"cache layer {i}"
    assert [s.pre_prefill for s in a.history] == [s.pre_prefill for s in b.history]
    same(a.kv, b.kv, "kv_cache memory")
    assert (a.decoder.stored(), a.cache_tokens()) == (b.decoder.stored(), b.cache_tokens())


WHERE = [*(f"layer:{i}" for i in range(LAYERS)), "post_vit", "pre_prefill", "decoder:1", "prefill"]
"""Encoder layers, the two token stages, the prefill half-way (decoder layer 1 of 2: layer 0 has
appended its keys, and stored them in a kv_cache memory) and after the whole prefill."""


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    chunks_before=st.integers(0, 2),
    where=st.sampled_from(WHERE),
    error=st.sampled_from([RuntimeError, KeyboardInterrupt]),
    fpc=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**16),
)
@example(chunks_before=2, where="decoder:1", error=RuntimeError, fpc=1, seed=0)
@pytest.mark.parametrize("kv", kv_strategies())
def test_a_failed_chunk_leaves_the_stream_as_if_it_never_came(
    tiny_llava_ov, monkeypatch, chunks_before, where, error, fpc, seed, kv
) -> None:
    arm: dict[str, Any] = {"error": error}
    frames = random_frames(fpc * (chunks_before + 2), seed=seed)
    chunk = [frames[i * fpc : (i + 1) * fpc] for i in range(chunks_before + 2)]
    with build(arm, fpc, kv).apply(tiny_llava_ov) as bound:
        real_prefill = bound.target.prefill_visual

        def prefill(llm, tokens):
            real_prefill(llm, tokens)  # the cache has moved when the failure comes
            if arm.get("where") == "prefill":
                arm["where"] = None
                raise arm["error"]("injected failure")

        monkeypatch.setattr(bound.target, "prefill_visual", prefill)

        def decoder_layer(module, args, kwargs):
            if arm.get("where") == "decoder:1":
                arm["where"] = None
                raise arm["error"]("injected failure")

        layer_1 = bound.target.decoder_layout().attention[1]
        handle = layer_1.register_forward_pre_hook(decoder_layer, with_kwargs=True)
        failed, clean = bound.stream(), bound.stream()
        for c in chunk[:chunks_before]:
            assert len(failed.add_frames(c)) == len(clean.add_frames(c)) == 1
        arm["where"] = where
        with pytest.raises((PluginFault, KeyboardInterrupt)) as exc:
            failed.add_frames(chunk[chunks_before])
        assert arm["where"] is None  # the failure did fire
        if error is RuntimeError:
            assert "injected failure" in str(exc.value) and f"chunk {chunks_before}" in str(exc.value)
        same_stream(failed, clean)
        after_failed = failed.add_frames(chunk[chunks_before + 1])
        after_clean = clean.add_frames(chunk[chunks_before + 1])
        assert [s.pre_prefill for s in after_failed] == [s.pre_prefill for s in after_clean]
        same_stream(failed, clean)
        question = torch.tensor([5, 6])
        assert torch.equal(failed.ask(question, 1).first_logits, clean.ask(question, 1).first_logits)
        handle.remove()


def test_frames_queued_before_a_failed_call_stay_queued(tiny_llava_ov) -> None:
    arm: dict[str, Any] = {"error": RuntimeError}
    frames = random_frames(3)
    with build(arm, 2).apply(tiny_llava_ov) as bound:
        s = bound.stream()
        assert s.add_frames(frames[:1]) == []
        arm["where"] = "pre_prefill"
        with pytest.raises(PluginFault):
            s.add_frames(frames[1:2])
        assert len(s._pending) == 1 and np.array_equal(s._pending[0], frames[0])
        (stats,) = s.add_frames(frames[2:3])
        assert (stats.chunk, stats.first_frame, stats.frames) == (0, 0, 2)


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        (np.zeros((1, 0, 40, 3), np.uint8), "at least one pixel"),
        (np.zeros((40, 0, 3), np.uint8), "at least one pixel"),
        (np.full((1, 8, 8, 3), 0.5, np.float32), "(x * 255).round().astype(np.uint8)"),
        (np.full((1, 8, 8, 3), 200.0, np.float64), "x.round().clip(0, 255).astype(np.uint8)"),
        (np.full((1, 8, 8, 3), np.nan, np.float32), "NaN"),
        ([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 4), np.uint8)], "frames[1] must be RGB"),
    ],
)
def test_bad_frames_are_refused_before_they_are_queued(tiny_llava_ov, bad, needle) -> None:
    with build({}, 1).apply(tiny_llava_ov) as bound:
        s, ref = bound.stream(), bound.stream()
        with pytest.raises(VideoError) as exc:
            s.add_frames(bad)
        assert needle in str(exc.value) and "\n" not in str(exc.value)
        same_stream(s, ref)
        frames = random_frames(1)
        assert [c.pre_prefill for c in s.add_frames(frames)] == [
            c.pre_prefill for c in ref.add_frames(frames)
        ]
