"""streamingtom_oqm on the Qwen M-RoPE targets (Qwen2-VL, Qwen2.5-VL, Qwen3-VL).

The position rules (:mod:`tokencompress.strategies.streamingtom_oqm.positions`, all by
:func:`tokencompress.api.memory_positions.retrieved_positions`) as properties on synthetic streams;
the memory holding the whole video answers like a plain stream: with a lossless store standing in
for the 4-bit one, first-token logits within 1e-5 and the same greedy tokens (so only the
quantisation separates them), with the real 4-bit store within the stated tolerance; the built-in
models with real timestamp text; partial retrieval places groups by the scheme; the encoding
window closes up the frames that left it; a failed chunk leaves the memory as it was.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.models import random_frames
from tokencompress import Pipeline, Registry
from tokencompress.api.memory_positions import FrameSpan, frame_advances, retrieved_positions
from tokencompress.strategies.streamingtom_oqm.layer import OQMLayer
from tokencompress.strategies.streamingtom_oqm.mrope import OQMMRoPELayer
from tokencompress.strategies.streamingtom_oqm.positions import encode_shift, rope_3d, shift_keys

QUESTION = torch.tensor([21, 22, 23])
PREFIX = torch.tensor([11, 12, 13, 14, 15])
FRAMES = random_frames(12, seed=8)
TARGETS = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]
PIXELS = 128 * 128
"""16 merged tokens a slice on every tiny Qwen (an even group: 2 codes a byte at 4 bits)."""
_MODELS: dict[str, torch.nn.Module] = {}
EXACT = 1e-5
"""First-token logits, lossless store holding everything vs the plain stream (float32 rounding only)."""
QUANT_ATOL = 0.03
"""First-token logits, real 4-bit store holding everything vs the plain stream: the rounding of the
stored keys and values (measured <= 0.0093 on the tiny models, logits of magnitude <= 0.55)."""


def tiny(name: str) -> torch.nn.Module:
    if name not in _MODELS:
        _MODELS[name] = Registry().target(name).tiny_model(seed=1)
    return _MODELS[name]


@pytest.fixture
def lossless(monkeypatch):
    """The M-RoPE layers keep every stored group's exact keys and values next to the 4-bit codes
    and read those back: what is left between the memory and a plain stream is positions only."""

    def store_chunk(self, k_pre, k_rot, v):  # type: ignore[no-untyped-def]
        OQMLayer.store_chunk(self, k_pre, k_rot, v)
        g = self.cfg.group_size
        raw = list(vars(self).get("raw", []))
        raw += [(k_rot[:, i : i + g], v[:, i : i + g]) for i in range(0, k_rot.shape[1], g)]
        self.raw = raw

    def groups_kv(self, ids=None, start=0):  # type: ignore[no-untyped-def]
        idx = range(start, len(self.store)) if ids is None else ids.tolist()
        raw = vars(self).get("raw", [])
        ks = [self.init_k[:, :0], *(raw[i][0] for i in idx)]
        vs = [self.init_v[:, :0], *(raw[i][1] for i in idx)]
        return torch.cat(ks, 1), torch.cat(vs, 1)

    monkeypatch.setattr(OQMMRoPELayer, "store_chunk", store_chunk)
    monkeypatch.setattr(OQMMRoPELayer, "groups_kv", groups_kv)


# ------------------------------------------------------------------ the position rules
@st.composite
def streams(draw):
    """A synthetic M-RoPE stream as Qwen places chunks: sinks at 0..S-1, each frame's text rows on
    all axes and visual rows at ``(c + t, c + h, c + w)``, each starting where the previous advanced."""
    sinks = draw(st.integers(0, 6))
    cursor, frames = sinks, []
    for _ in range(draw(st.integers(1, 7))):
        lead, trail = draw(st.integers(0, 3)), draw(st.integers(0, 2))
        t, h, w = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
        tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
        c = cursor + lead
        vis = torch.stack((tt.reshape(-1), hh.reshape(-1), ww.reshape(-1))) + c
        end = int(vis.max()) + 1
        text = torch.cat((torch.arange(cursor, c), torch.arange(end, end + trail))).expand(3, -1)
        frames.append((torch.cat((text, vis), dim=1), cursor))
        cursor = end + trail + draw(st.integers(0, 2))
    return torch.arange(sinks).expand(3, -1), frames, cursor


@settings(max_examples=200, deadline=None)
@given(streams(), st.data())
def test_a_chunk_follows_its_window_as_the_scheme_places_it(stream, data) -> None:
    """``window``: the chunk moves down by exactly the span of the frames that left the window (the
    reference's ``n_init + len(window)`` on one axis); nothing left: the stream's own positions."""
    sinks, frames, chunk_start = stream
    assert encode_shift(sinks, frames, chunk_start, "window") == 0
    assert encode_shift(sinks, frames[1:], chunk_start, "absolute") == 0
    first = data.draw(st.integers(0, len(frames)))
    sigma = encode_shift(sinks, frames[first:], chunk_start, "window")
    left = (frames[first][1] if first < len(frames) else chunk_start) - sinks.shape[1]
    assert sigma == -left
    spans = [
        FrameSpan(p, s, a)
        for (p, s), a in zip(frames, frame_advances([s for _, s in frames], chunk_start), strict=True)
    ]
    placed = retrieved_positions(sinks, spans[first:])  # the same placement a question would give
    assert placed.question == chunk_start + sigma


def test_one_axis_the_window_rule_is_the_references() -> None:
    """One row a token, on all three axes: ``n_init + len(window)`` as the 1-D memory numbers it."""
    n_init, tpf, stored = 6, 8, 5
    sinks = torch.arange(n_init).expand(3, -1)
    frames = [
        (torch.arange(n_init + f * tpf, n_init + (f + 1) * tpf).expand(3, -1), n_init + f * tpf)
        for f in range(stored)
    ]
    chunk_start = n_init + stored * tpf
    for kept in range(stored + 1):
        window = frames[stored - kept :]
        assert chunk_start + encode_shift(sinks, window, chunk_start, "window") == n_init + kept * tpf


@pytest.mark.parametrize("target", ["qwen2_5_vl", "qwen3_vl"])
def test_moving_rotated_keys_is_rotating_them_at_the_new_place(target) -> None:
    """Angles add on every M-RoPE section (interleaved on Qwen3-VL too): a key rotated at ``p`` and
    moved by ``s`` on all axes is the key rotated at ``p + s``; a shift of 0 returns it bit for bit."""
    t = Registry().target(target)(tiny(target))
    d = t.decoder_layout().head_dim
    gen = torch.Generator().manual_seed(0)
    k = torch.randn(2, 7, d, generator=gen)
    pos = torch.randint(0, 40, (3, 7), generator=gen)
    shifts = torch.tensor([0, 3, -2, 0, 11, 5, -4])
    rotated = rope_3d(k, pos, t.rope_cos_sin)
    moved = shift_keys(rotated, shifts, t.rope_cos_sin)
    torch.testing.assert_close(moved, rope_3d(k, pos + shifts, t.rope_cos_sin), atol=2e-6, rtol=0)
    assert torch.equal(moved[:, shifts == 0], rotated[:, shifts == 0])
    assert shift_keys(rotated, torch.zeros(7, dtype=torch.long), t.rope_cos_sin) is rotated


# ------------------------------------------------------------------ end to end
def pipe(kv=None, fpc=2, pixels=PIXELS) -> Pipeline:
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


def whole(**params) -> dict:
    return {"strategy": "streamingtom_oqm", "window_tokens": 4096, "retrieval_max_tokens": 4096, **params}


def assert_plain_layout(s) -> None:
    """Every group retrieved, nothing left the window: the plain stream's own positions."""
    kv = s.kv
    n_groups = len(kv.layers[0].store)
    placed = kv.placement(torch.arange(n_groups))
    plain = torch.cat([kv.sink_pos, *kv.frame_pos, *kv.frame_side], dim=1)
    assert torch.equal(placed.positions, plain) and not bool(placed.shifts.any())
    assert placed.question == kv.next_position == s.llm.next_position
    assert set(kv.frame_shift) == {0}


@pytest.mark.slow
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.sampled_from(TARGETS),
    st.sampled_from([2, 4]),
    st.integers(2, 5),
    st.sampled_from(["reference", "consistent"]),
)
def test_memory_holding_the_whole_video_answers_like_a_plain_stream(
    lossless, target, fpc, slices, mode
) -> None:
    model, frames = tiny(target), FRAMES[: 2 * slices]
    plain, _ = answer(model, pipe(fpc=fpc), frames)
    got, s = answer(model, pipe(whole(retrieval_pass=mode), fpc=fpc), frames)
    torch.testing.assert_close(got.first_logits, plain.first_logits, atol=EXACT, rtol=0)
    assert got.token_ids == plain.token_ids
    assert got.retrieved == [list(range(slices))] * len(s.kv.layers)
    assert_plain_layout(s)


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_the_4_bit_store_answers_like_a_plain_stream_within_its_rounding(target) -> None:
    model, frames = tiny(target), FRAMES[:8]
    plain, _ = answer(model, pipe(), frames)
    got, s = answer(model, pipe(whole()), frames)
    a, b = plain.first_logits, got.first_logits
    torch.testing.assert_close(b, a, atol=QUANT_ATOL, rtol=0)
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.99
    assert_plain_layout(s)
    coarse, _ = answer(model, pipe(whole(bits=2)), frames)
    assert (coarse.first_logits - a).abs().max() >= (b - a).abs().max()  # 2 bits round coarser


@pytest.mark.slow
@pytest.mark.parametrize("name", ["builtin-qwen", "builtin-qwen3"])
def test_builtin_models_with_questions(lossless, name) -> None:
    """Real tokenizer and question text (Qwen3-VL: timestamp rows travel with their frames): the whole
    memory equals the plain stream and ReKV holding the whole video; a bounded one keeps answering."""
    from tokencompress.models.loading import load_model

    loaded = load_model(name)
    frames = random_frames(6, seed=3)
    kw = {"tokenizer": loaded.tokenizer, "question": "What happens?", "prefix": None}
    every = 196 * 256  # a multiple of both models' tokens a slice (196, 256)
    big = pipe(whole(window_tokens=every, retrieval_max_tokens=every), pixels=448 * 448)
    plain, _ = answer(loaded.model, pipe(pixels=448 * 448), frames, **kw)
    got, s = answer(loaded.model, big, frames, **kw)
    rekv, _ = answer(
        loaded.model, pipe({"strategy": "rekv", "n_local": 8192, "topk": 32}, pixels=448 * 448), frames, **kw
    )
    for other in (plain, rekv):
        torch.testing.assert_close(got.first_logits, other.first_logits, atol=EXACT, rtol=0)
        assert got.token_ids == other.token_ids
    assert_plain_layout(s)
    if name == "builtin-qwen3":
        assert all(side.shape[1] > 2 for side in s.kv.frame_side)  # timestamp text + delimiters
    tpf = s.kv.frame_pos[0].shape[1]
    small = pipe(
        {"strategy": "streamingtom_oqm", "window_tokens": tpf, "retrieval_max_tokens": tpf}, pixels=448 * 448
    )
    with small.apply(loaded.model) as bound:
        t = bound.stream(tokenizer=loaded.tokenizer)
        for i in range(0, len(frames), 2):
            t.add_frames(frames[i : i + 2])
            out = t.ask("What happens?", max_new_tokens=3)
            assert all(len(ids) == 1 for ids in out.retrieved) and len(out.token_ids) <= 3
        assert t.kv.memory_stats()["retrieved_groups_per_question"] == [1, 1, 1]


@pytest.mark.slow
@pytest.mark.parametrize(("target", "split"), [("qwen2_vl", 1), ("qwen2_5_vl", 2), ("qwen3_vl", 2)])
def test_partial_retrieval_places_groups_by_the_scheme(target, split) -> None:
    """Three groups a layer (``split`` groups a frame): every retrieved group sits at its frame's
    place, the frame moved whole by one shift, frames back to back after the prompt, the question
    after them; the answer cache holds the stored keys moved by exactly that shift."""
    tpf = 16
    g = tpf // split
    small = {
        "strategy": "streamingtom_oqm",
        "window_tokens": 2 * tpf,
        "retrieval_max_tokens": 3 * g,
        "group_size": g,
    }
    got, s = answer(tiny(target), pipe(small), FRAMES)
    kv = s.kv
    assert got.retrieved is not None
    for info in kv.infos:
        ids = info.selection.indices
        assert ids.numel() == 3
        placed = kv.placement(ids)
        sinks = kv.sink_pos.shape[1]
        assert torch.equal(placed.positions[:, :sinks], kv.sink_pos)
        frames = sorted({int(i) // split for i in ids})
        assert placed.frames == frames
        cursor, move = sinks, {}
        for f in frames:
            move[f] = cursor - kv.frame_start[f]
            cursor += frame_advance(kv, f)
        for j, i in enumerate(ids.tolist()):
            f, part = i // split, i % split
            rows = placed.positions[:, sinks + j * g : sinks + (j + 1) * g]
            assert torch.equal(rows, kv.frame_pos[f][:, part * g : (part + 1) * g] + move[f])
            assert bool(
                (placed.shifts[sinks + j * g : sinks + (j + 1) * g] == move[f] - kv.frame_shift[f]).all()
            )
        at = sinks + 3 * g
        for f in frames:
            n = kv.frame_side[f].shape[1]
            assert torch.equal(placed.positions[:, at : at + n], kv.frame_side[f] + move[f])
            at += n
        assert at == placed.positions.shape[1]
        assert placed.question > int(placed.positions.max()) and placed.question >= cursor
        assert placed.question < s.llm.next_position  # frames left out: positions closed up


def frame_advance(kv, f: int) -> int:
    starts = kv.frame_start
    return (starts[f + 1] if f + 1 < len(starts) else kv.next_position) - starts[f]


@pytest.mark.slow
def test_the_window_rule_closes_up_frames_that_left_and_absolute_keeps_stream_positions() -> None:
    """Two slices' window: once a slice has left, each chunk is encoded moved down by the span of the
    slices that left (bounded positions); ``positions: absolute`` keeps the stream's own."""
    model = tiny("qwen2_5_vl")
    kv = {"strategy": "streamingtom_oqm", "window_tokens": 32, "retrieval_max_tokens": 32}
    _, s = answer(model, pipe(kv), FRAMES)
    m = s.kv
    sinks = m.sink_pos.shape[1]
    for f, sigma in enumerate(m.frame_shift):
        first = max(0, f - 2)  # the window holds the two slices before frame f
        assert sigma == -(m.frame_start[first] - sinks)
    assert m.bounds_positions and min(m.frame_shift) < 0
    _, t = answer(model, pipe({**kv, "positions": "absolute"}), FRAMES)
    assert set(t.kv.frame_shift) == {0} and not t.kv.bounds_positions
    assert s.cache_tokens() <= sinks + 32 + sum(side.shape[1] for side in m.frame_side[-2:])


@pytest.mark.slow
@pytest.mark.parametrize("target", ["qwen2_5_vl", "qwen3_vl"])
def test_a_failed_chunk_leaves_the_m_rope_memory_as_it_was(target) -> None:
    model = tiny(target)
    small = {"strategy": "streamingtom_oqm", "window_tokens": 32, "retrieval_max_tokens": 32}
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
        assert len(s.kv.frame_pos) == 3 and all(len(mem.side_k) == 3 for mem in s.kv.layers)
        s.add_frames(FRAMES[6:])
        got = s.ask(QUESTION, max_new_tokens=4)
    assert torch.equal(got.first_logits, want.first_logits) and got.token_ids == want.token_ids
    assert got.retrieved == want.retrieved
