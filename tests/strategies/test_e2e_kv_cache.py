"""The kv_cache stage end to end on tiny random-weight models: rekv and sliding_window.

A window larger than the stream must change nothing; a question must leave the memory exactly
as it was; two streams never share state; bounded windows stay bounded.
"""

from __future__ import annotations

import copy

import pytest
import torch

from tests.support.models import random_frames
from tokencompress import Pipeline
from tokencompress.api.errors import ConfigError

pytestmark = pytest.mark.slow

PREFIX = torch.tensor([11, 12, 13, 14, 15])
QUESTION = torch.tensor([21, 22, 23])
BIG = {
    "rekv": {"strategy": "rekv", "n_local": 2048, "topk": 32},
    "sliding_window": {"strategy": "sliding_window", "n_local": 2048},
}
SMALL = {
    "rekv": {"strategy": "rekv", "n_local": 48, "topk": 2},
    "sliding_window": {"strategy": "sliding_window", "n_local": 48},
}


def pipe(kv=None, fpc=1, **stages):
    if kv is not None:
        stages["kv_cache"] = [kv]
    return Pipeline.from_dict({"name": "t", "stream": {"frames_per_chunk": fpc}, "stages": stages})


def run(model, pipeline, video, **ask):
    with pipeline.apply(model) as bound:
        s = bound.stream()
        s.prefill_ids(PREFIX)
        stats = s.add_frames(video)
        return s.ask(QUESTION, max_new_tokens=3, **ask), stats, s


def memory_snapshot(stream) -> list[torch.Tensor]:
    """Every tensor and counter the stream's decoder memory holds, copied."""
    out: list = [stream.llm.next_position, stream.llm.length]
    kv = stream.kv
    for layer in getattr(kv, "layers", []):
        out += [layer.length, layer.loaded, layer.win_start, len(layer.store)]
        out += [t.clone() for t in (layer.sink_k, layer.win_k, layer.win_v, layer.pend_k, layer.store.reps)]
        out += [t.clone() for t in layer.store.gather(torch.arange(len(layer.store)))]
    for layer in stream.llm.cache.layers:
        if getattr(layer, "keys", None) is not None:
            out += [layer.keys.clone(), layer.values.clone()]
    if getattr(kv, "positions", None) is not None:
        out.append(kv.positions.clone())
    return out


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y for x, y in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("name", ["rekv", "sliding_window"])
def test_window_larger_than_the_stream_answers_like_the_plain_pipeline(tiny_llava_ov, frames, name):
    plain, _, _ = run(tiny_llava_ov, pipe(), frames)
    got, stats, stream = run(tiny_llava_ov, pipe(BIG[name]), frames)
    torch.testing.assert_close(got.first_logits, plain.first_logits, atol=1e-5, rtol=1e-5)
    assert got.token_ids == plain.token_ids
    assert [c.cache_tokens for c in stats] == [5 + 16 * (i + 1) for i in range(len(frames))]
    if name == "rekv":  # every frame is retrieved (fewer frames than topk), by every layer
        assert got.retrieved == [list(range(len(frames)))] * 2
        assert stats[-1].stored_tokens == 0  # frames become blocks only once the window overflows


@pytest.mark.parametrize("name", ["rekv", "sliding_window"])
def test_a_question_leaves_the_memory_exactly_as_it_was(tiny_llava_ov, name):
    frames = random_frames(9, seed=3)
    with pipe(SMALL[name]).apply(tiny_llava_ov) as bound:
        asked, quiet = bound.stream(), bound.stream()
        for s in (asked, quiet):
            s.prefill_ids(PREFIX)
            s.add_frames(frames[:6])
        before = memory_snapshot(asked)
        first = asked.ask(QUESTION, max_new_tokens=4)
        assert same(before, memory_snapshot(asked))
        again = asked.ask(QUESTION, max_new_tokens=4)
        assert again.token_ids == first.token_ids and torch.equal(again.first_logits, first.first_logits)
        for s in (asked, quiet):
            s.add_frames(frames[6:])
        assert same(memory_snapshot(asked), memory_snapshot(quiet))
        assert torch.equal(asked.ask(QUESTION).first_logits, quiet.ask(QUESTION).first_logits)


@pytest.mark.parametrize("name", ["rekv", "sliding_window"])
def test_two_interleaved_streams_equal_separate_runs(tiny_llava_ov, name):
    a, b = random_frames(7, seed=1), random_frames(7, seed=2)
    alone = [run(tiny_llava_ov, pipe(SMALL[name]), f)[0] for f in (a, b)]
    with pipe(SMALL[name]).apply(tiny_llava_ov) as bound:
        sa, sb = bound.stream(), bound.stream()
        sa.prefill_ids(PREFIX)
        sb.prefill_ids(PREFIX)
        for i in range(7):
            sa.add_frames(a[i])
            if i == 3:
                sb.ask(QUESTION)
            sb.add_frames(b[i])
        got = [sa.ask(QUESTION, max_new_tokens=3), sb.ask(QUESTION, max_new_tokens=3)]
    for g, want in zip(got, alone, strict=True):
        assert torch.equal(g.first_logits, want.first_logits) and g.token_ids == want.token_ids


def test_rekv_bounded_window_retrieves_topk_frames_per_layer(tiny_llava_ov):
    frames = random_frames(10, seed=4)
    answer, stats, stream = run(tiny_llava_ov, pipe(SMALL["rekv"]), frames)
    # window of 48 tokens = 3 frames, plus the 5 sinks once they left it
    assert max(c.cache_tokens for c in stats) <= 48 + 5
    assert [c.stored_tokens for c in stats][-1] == 16 * 10  # every frame is a block (quirk Q9)
    assert stats[-1].stored_bytes == 2 * 2 * 10 * 16 * 2 * 16 * 4  # K+V, layers, frames, tokens, kvh, d, fp32
    assert len(answer.retrieved) == 2
    for ids in answer.retrieved:
        assert ids == sorted(set(ids)) and len(ids) == 2 and all(0 <= i < 10 for i in ids)
    mem = stream.bytes_by_device()
    assert mem["cpu"] >= stats[-1].stored_bytes


def test_rekv_external_retrieval_uses_the_given_frames(tiny_llava_ov):
    frames = random_frames(8, seed=5)
    answer, _, stream = run(tiny_llava_ov, pipe(SMALL["rekv"]), frames, frames=[6, 1, 6])
    assert answer.retrieved == [[1, 6], [1, 6]]
    with pytest.raises(ConfigError, match="out of range"):
        stream.ask(QUESTION, frames=[8])
    with pytest.raises(ConfigError, match="at most topk"):
        stream.ask(QUESTION, frames=[0, 1, 2])


def _crop_plain(stream, keep: int) -> None:
    """Drop all but the last ``keep`` cached tokens, keeping their positions (no renumbering)."""
    for layer in stream.llm.cache.layers:
        layer.keys, layer.values = layer.keys[:, :, -keep:], layer.values[:, :, -keep:]


def _renumbering_is_exact(model, frames, n_local: int, fpc: int = 1) -> None:
    """sliding_window without sinks renumbers the whole window by one shift, so with relative
    RoPE it must answer exactly like a cache cropped the same way at its original positions."""
    kv = {"strategy": "sliding_window", "n_local": n_local, "sink_tokens": 0}
    with pipe(kv, fpc=fpc).apply(model) as bound:
        s = bound.stream()
        s.prefill_ids(PREFIX)
        s.add_frames(frames)
        got = s.ask(QUESTION, max_new_tokens=3)
        assert s.llm.next_position < n_local + 2 * s.history[-1].llm_tokens + 8
    with pipe(fpc=fpc).apply(model) as bound:
        ref = bound.stream()
        ref.prefill_ids(PREFIX)
        for i in range(0, len(frames), fpc):
            ref.add_frames(frames[i : i + fpc])
            if ref.llm.length > n_local:
                _crop_plain(ref, n_local)
        want = ref.ask(QUESTION, max_new_tokens=3)
    torch.testing.assert_close(got.first_logits, want.first_logits, atol=1e-4, rtol=1e-4)
    assert got.token_ids == want.token_ids


def test_sliding_window_renumbering_matches_unrenumbered_crop(tiny_llava_ov):
    _renumbering_is_exact(tiny_llava_ov, random_frames(8, seed=6), n_local=40)


def test_position_guard_warns_then_refuses_naming_the_strategies(tiny_llava_ov):
    from tokencompress.stream.positions import PositionLimitError, PositionWarning

    model = copy.deepcopy(tiny_llava_ov)
    model.config.get_text_config().max_position_embeddings = 120
    frames = random_frames(9, seed=7)
    with pipe().apply(model) as bound:
        s = bound.stream()
        s.prefill_ids(PREFIX)
        s.add_frames(frames[:6])  # 5 + 96 = 101 positions: quiet
        with pytest.warns(PositionWarning, match="120"):
            s.add_frames(frames[6])  # 117 >= 0.9 * 120
        before = memory_snapshot(s)
        with pytest.raises(
            PositionLimitError,
            match=r"max_position_embeddings 120.*\{strategy: rekv\}, \{strategy: sliding_window\}",
        ):
            s.add_frames(frames[7])
        assert same(before, memory_snapshot(s))
    with pipe(SMALL["sliding_window"]).apply(model) as bound:
        s = bound.stream()
        s.prefill_ids(PREFIX)
        s.add_frames(frames)
        s.ask(QUESTION)  # bounded: never refused
        assert s.llm.next_position <= 5 + 48 + 16
