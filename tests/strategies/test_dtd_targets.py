"""DTD in pipelines on the built-in targets: kept tokens keep exactly the M-RoPE positions of an
unpruned run (Qwen2-VL, Qwen2.5-VL, Qwen3-VL), chunks dropped whole, placement and refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokencompress import CompatibilityError, Pipeline, Registry, Stage
from tokencompress.testing import moving_frames

pytestmark = pytest.mark.slow

REGISTRY = Registry()
QWEN = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]
FRAMES = moving_frames(6, seed=11)
_MODELS: dict[str, torch.nn.Module] = {}


def tiny(name: str) -> torch.nn.Module:
    if name not in _MODELS:
        _MODELS[name] = REGISTRY.target(name).tiny_model()
    return _MODELS[name]


def _pipeline(target: str, steps: list, fpc: int = 2, prefill_chunks: int = 1) -> Pipeline:
    options = {"max_pixels": 112 * 112} if target in QWEN else {}
    return Pipeline.from_dict(
        {
            "target": target,
            "target_options": options,
            "stream": {"frames_per_chunk": fpc, "fps": 2, "prefill_chunks": prefill_chunks},
            "stages": {"post_vit": steps} if steps else {},
        },
        REGISTRY,
    )


def _positions(target: str, steps: list) -> tuple[list, int]:
    """Every chunk's (kept tokens, positions ``[3, 1, L]``) and where text continues afterwards."""
    seen = []
    with _pipeline(target, steps).apply(tiny(target)) as bound:
        original = bound.target.visual_positions

        def spy(state, tokens):
            pos = original(state, tokens)
            seen.append((tokens, pos))
            return pos

        bound.target.visual_positions = spy
        stream = bound.stream()
        stream.prefill_ids(torch.tensor([11, 12, 13]))
        stream.add_frames(FRAMES)
        return seen, stream.llm.next_position


@pytest.mark.parametrize("target", QWEN)
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tau=st.sampled_from([-1.0, 0.0, 0.3, 0.6, 0.9, 0.99]),
    relative=st.booleans(),
)
def test_kept_tokens_keep_their_unpruned_mrope_positions(target: str, tau: float, relative: bool) -> None:
    """One 2-frame slice per chunk, laid out ``<|vision_start|> tokens <|vision_end|>``: every kept
    token sits at the (t, h, w) it had in the unpruned run, the delimiters and the text after the
    video do not move, and nothing is renumbered."""
    step = {"strategy": "dtd", "threshold": min(abs(tau), 0.9) if relative else tau}
    if relative:
        step["mode"] = "relative"
    full, full_next = _positions(target, [])
    kept, kept_next = _positions(target, [step])
    assert len(full) == len(kept) == 3 and kept_next == full_next
    for (all_tokens, want), (tokens, got) in zip(full, kept, strict=True):
        assert torch.equal(all_tokens.source, torch.arange(all_tokens.count))
        cols = torch.cat([torch.tensor([0]), 1 + tokens.source.cpu(), torch.tensor([want.shape[-1] - 1])])
        assert torch.equal(got, want[:, :, cols])


def test_the_stream_drops_tokens_where_frames_repeat_and_keeps_frame_zero() -> None:
    frames = np.tile(FRAMES[:2], (3, 1, 1, 1))  # the same two frames, so slices 1 and 2 repeat slice 0
    with _pipeline("qwen2_5_vl", [{"strategy": "dtd"}]).apply(tiny("qwen2_5_vl")) as bound:
        stats = bound.stream().add_frames(frames)
    assert [c.pre_prefill for c in stats] == [(16, 16), (16, 0), (16, 0)]


@pytest.mark.parametrize("prefill_chunks", [1, 2])
@pytest.mark.parametrize("target", ["llava_onevision", "llava_next_video"])
def test_a_chunk_dropped_whole_prefills_nothing_and_the_stream_answers(
    target: str, prefill_chunks: int
) -> None:
    """A static scene keeps no token of a later chunk; a target with no chunk delimiters then has
    nothing to prefill, and the stream goes on and answers."""
    frames = np.repeat(FRAMES[:1], 4, axis=0)
    with _pipeline(target, [{"strategy": "dtd"}], 1, prefill_chunks).apply(tiny(target)) as bound:
        stream = bound.stream()
        stats = stream.add_frames(frames) + stream.flush()
        per = stats[0].pre_prefill[0]
        assert [c.pre_prefill for c in stats] == [(per, per)] + [(per, 0)] * 3
        assert stream.llm.visual_tokens == per
        answer = stream.ask(torch.tensor([5, 6, 7]), max_new_tokens=2)
    assert bool(torch.isfinite(answer.first_logits).all())


@pytest.mark.parametrize("target", ["llava_onevision", "qwen2_5_vl"])
def test_runs_on_the_merged_grid_and_says_so(target: str) -> None:
    with _pipeline(target, [{"strategy": "dtd"}]).apply(tiny(target)) as bound:
        assert [s.name for s in bound.by_stage[Stage.PRE_PREFILL]] == ["dtd"]
        assert not bound.by_stage[Stage.POST_VIT]
        assert any("dtd (post_vit)" in note and "pre_prefill" in note for note in bound.notes)


def test_a_kv_cache_strategy_with_fixed_blocks_refuses_the_dynamic_count() -> None:
    pipe = Pipeline.from_dict(
        {
            "target": "llava_onevision",
            "stages": {"post_vit": [{"strategy": "dtd"}], "kv_cache": [{"strategy": "rekv"}]},
        },
        REGISTRY,
    )
    with pytest.raises(CompatibilityError, match="dtd"):
        pipe.bind(tiny("llava_onevision"))
