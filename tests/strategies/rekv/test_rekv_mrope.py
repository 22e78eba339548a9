"""ReKV on the Qwen M-RoPE targets (Qwen2-VL, Qwen2.5-VL, Qwen3-VL).

The position scheme (:mod:`tokencompress.api.memory_positions`) as a property on synthetic
streams; the memory holding the whole video answers like a plain stream (first-token logits
within 1e-5, same greedy tokens) on all three targets and on the built-in models with real
timestamp text; partial retrieval places frames as the scheme says; a failed chunk leaves the
M-RoPE memory as it was.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.models import random_frames
from tokencompress import Pipeline, Registry
from tokencompress.api.memory_positions import FrameSpan, frame_advances, retrieved_positions

QUESTION = torch.tensor([21, 22, 23])
PREFIX = torch.tensor([11, 12, 13, 14, 15])
FRAMES = random_frames(12, seed=8)
TARGETS = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]
_MODELS: dict[str, torch.nn.Module] = {}
ATOL = 1e-5
"""First-token logits of the memory holding everything vs the plain stream (float32; relative
positions instead of absolute ones change rounding only, measured <= 2e-7)."""


def tiny(name: str) -> torch.nn.Module:
    if name not in _MODELS:
        _MODELS[name] = Registry().target(name).tiny_model(seed=1)
    return _MODELS[name]


# ------------------------------------------------------------------ the scheme itself
@st.composite
def streams(draw):
    """A synthetic M-RoPE stream: sinks at 0..S-1, then frames placed as Qwen places chunks
    (text rows on all axes, visual rows at ``(c + t, c + h, c + w)``), each starting where the
    previous one advanced the stream."""
    sinks = draw(st.integers(0, 6))
    cursor, spans = sinks, []
    for _ in range(draw(st.integers(1, 7))):
        lead, trail = draw(st.integers(0, 3)), draw(st.integers(0, 2))
        t, h, w = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
        tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
        c = cursor + lead
        vis = torch.stack((tt.reshape(-1), hh.reshape(-1), ww.reshape(-1))) + c
        end = int(vis.max()) + 1
        text = torch.cat((torch.arange(cursor, c), torch.arange(end, end + trail))).expand(3, -1)
        spans.append((torch.cat((text, vis), dim=1), cursor))
        cursor = end + trail + draw(st.integers(0, 2))
    starts = [s for _, s in spans]
    adv = frame_advances(starts, cursor)
    frames = [FrameSpan(p, s, a) for (p, s), a in zip(spans, adv, strict=True)]
    return torch.arange(sinks).expand(3, -1), frames, cursor


@settings(max_examples=200, deadline=None)
@given(streams(), st.data())
def test_retrieved_frames_move_as_wholes_back_to_back_after_the_sinks(stream, data) -> None:
    sinks, frames, next_position = stream
    everything = retrieved_positions(sinks, frames)
    assert all(torch.equal(a, f.positions) for a, f in zip(everything.frames, frames, strict=True))
    assert everything.question == next_position  # every frame: exactly the stream's own layout

    keep = sorted(data.draw(st.sets(st.integers(0, len(frames) - 1), min_size=1)))
    got = retrieved_positions(sinks, [frames[i] for i in keep])
    assert torch.equal(got.sinks, sinks)
    cursor = sinks.shape[1]
    for i, new in zip(keep, got.frames, strict=True):
        shift = new - frames[i].positions
        assert bool((shift == shift[0, 0]).all())  # one shift on every row and axis: geometry kept
        assert int(new.min()) == cursor  # starts where the previous retrieved frame advanced to
        cursor += frames[i].advance
    assert got.question >= cursor and got.question > got.largest  # the answer comes after the memory
    span = sinks.shape[1] + sum(frames[i].advance + int(frames[i].positions.max()) for i in keep)
    assert got.largest < span  # bounded by what was retrieved, not by the stream's length


# ------------------------------------------------------------------ end to end
def pipe(kv=None, fpc=2, pixels=112 * 112) -> Pipeline:
    stages = {"kv_cache": [kv]} if kv else {}
    return Pipeline.from_dict(
        {
            "stream": {"frames_per_chunk": fpc, "fps": 2},
            "target_options": {"max_pixels": pixels},
            "stages": stages,
        }
    )


def answer(model, pipeline, frames, question=QUESTION, tokenizer=None, prefix=PREFIX):
    with pipeline.apply(model) as bound:
        s = bound.stream(tokenizer=tokenizer)
        if prefix is not None:
            s.prefill_ids(prefix)
        s.add_frames(frames)
        return s.ask(question, max_new_tokens=4), s


WHOLE = {"strategy": "rekv", "n_local": 4096, "topk": 32}


@pytest.mark.slow
@settings(max_examples=8, deadline=None)
@given(st.sampled_from(TARGETS), st.sampled_from([2, 4]), st.integers(2, 6))
def test_memory_holding_the_whole_video_answers_like_a_plain_stream(target, fpc, slices) -> None:
    model, frames = tiny(target), FRAMES[: 2 * slices]
    plain, _ = answer(model, pipe(fpc=fpc), frames)
    got, s = answer(model, pipe(WHOLE, fpc=fpc), frames)
    torch.testing.assert_close(got.first_logits, plain.first_logits, atol=ATOL, rtol=0)
    assert got.token_ids == plain.token_ids
    assert got.retrieved == [list(range(slices))] * len(s.kv.layers)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["builtin-qwen", "builtin-qwen3"])
def test_builtin_models_answer_like_a_plain_stream_with_the_whole_video(name) -> None:
    """Real tokenizer: Qwen3-VL's timestamp text rows travel with their frames."""
    from tokencompress.models.loading import load_model

    loaded = load_model(name)
    frames = random_frames(4, seed=3)
    kw = {"tokenizer": loaded.tokenizer, "question": "What happens?", "prefix": None}
    plain, _ = answer(loaded.model, pipe(fpc=2, pixels=448 * 448), frames, **kw)
    got, s = answer(loaded.model, pipe({**WHOLE, "n_local": 8192}, fpc=2, pixels=448 * 448), frames, **kw)
    torch.testing.assert_close(got.first_logits, plain.first_logits, atol=ATOL, rtol=0)
    assert got.token_ids == plain.token_ids
    if name == "builtin-qwen3":
        assert all(side.shape[1] > 2 for side in s.kv.frame_side)  # timestamp text + delimiters


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_partial_retrieval_places_frames_by_the_scheme(target) -> None:
    small = {"strategy": "rekv", "n_local": 60, "topk": 2}
    got, s = answer(tiny(target), pipe(small), FRAMES)
    assert got.retrieved is not None and all(len(ids) == 2 for ids in got.retrieved)
    kv = s.kv
    for ids in got.retrieved:
        pos, question = kv.placement(torch.tensor(ids))
        bs = kv.settings.block_size
        sinks = kv.sink_pos.shape[1]
        assert torch.equal(pos[:, :sinks], kv.sink_pos)
        cursor = sinks
        sides = sinks + len(ids) * bs
        for j, f in enumerate(ids):
            vis = pos[:, sinks + j * bs : sinks + (j + 1) * bs]
            n_side = kv.frame_side[f].shape[1]
            side = pos[:, sides : sides + n_side]
            sides += n_side
            shift = cursor - kv.frame_start[f]
            assert torch.equal(vis, kv.frame_pos[f] + shift) and torch.equal(side, kv.frame_side[f] + shift)
            cursor += frame_advance(kv, f)
        assert question > int(pos.max()) and question >= cursor
        assert question < s.llm.next_position  # frames left out: positions closed up


def frame_advance(kv, f: int) -> int:
    starts = kv.frame_start
    return (starts[f + 1] if f + 1 < len(starts) else kv.next_position) - starts[f]


@pytest.mark.slow
@pytest.mark.parametrize("target", ["qwen2_5_vl", "qwen3_vl"])
def test_a_failed_chunk_leaves_the_m_rope_memory_as_it_was(target) -> None:
    model = tiny(target)
    small = {"strategy": "rekv", "n_local": 60, "topk": 2}
    want, _ = answer(model, pipe(small), FRAMES)
    layer = Registry().target(target)(model).language_model.layers[1]
    with pipe(small).apply(model) as bound:
        s = bound.stream()
        s.prefill_ids(PREFIX)
        s.add_frames(FRAMES[:6])

        def fail(*_):
            raise RuntimeError("injected")

        handle = layer.register_forward_pre_hook(fail)
        try:
            with pytest.raises(Exception, match="injected"):
                s.add_frames(FRAMES[6:8])
        finally:
            handle.remove()
        s.add_frames(FRAMES[6:])
        got = s.ask(QUESTION, max_new_tokens=4)
    assert torch.equal(got.first_logits, want.first_logits) and got.token_ids == want.token_ids
    assert got.retrieved == want.retrieved
