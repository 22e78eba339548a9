"""End to end on a tiny random-weight LLaVA-OneVision built from a config (docs/design.md §8, pipeline)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.support.models import build_tiny_llava_ov, random_frames
from tests.support.pipelines import STC, pipeline
from tokencompress import Stage

pytestmark = pytest.mark.slow

PREFIX = torch.tensor([11, 12, 13, 14, 15])
QUESTION = torch.tensor([21, 22, 23])


def stream_logits(model, pipe, frames, prefix=PREFIX, question=QUESTION):
    with pipe.apply(model) as bound:
        s = bound.stream()
        s.prefill_ids(prefix)
        s.add_frames(frames)
        return s.ask(question, max_new_tokens=3), s


def plain_logits(model, frames, bound_target):
    pixels = bound_target.preprocess(frames)[None]
    n_video = frames.shape[0] * 16 + 1
    ids = torch.cat([PREFIX, torch.full((n_video,), model.config.video_token_index), QUESTION])[None]
    with torch.inference_mode():
        return model(input_ids=ids, pixel_values_videos=pixels).logits[0, -1].float()


def test_keep_all_equals_plain_model(tiny_llava_ov, frames):
    pipe = pipeline(target_options={"newline": True})
    answer, stream = stream_logits(tiny_llava_ov, pipe, frames)
    expected = plain_logits(tiny_llava_ov, frames, pipe.bind(tiny_llava_ov).target)
    torch.testing.assert_close(answer.first_logits, expected, atol=1e-4, rtol=1e-4)
    assert stream.llm.visual_tokens == frames.shape[0] * 16


def test_keep_all_strategies_are_identity(tiny_llava_ov, frames):
    """Cacher at ratio 1.0 and a Pruner keeping all 16 tokens change nothing beyond float noise."""
    base, _ = stream_logits(tiny_llava_ov, pipeline(), frames)
    keep_all = {
        "pre_vit_block": [{"strategy": "stc_cacher", "update_token_ratio": 1.0}],
        "pre_prefill": [{"strategy": "stc_pruner", "tokens_per_frame": 16}],
    }
    got, _ = stream_logits(tiny_llava_ov, pipeline(keep_all), frames)
    torch.testing.assert_close(got.first_logits, base.first_logits, atol=1e-4, rtol=1e-4)
    pruner_only, _ = stream_logits(tiny_llava_ov, pipeline({"pre_prefill": keep_all["pre_prefill"]}), frames)
    assert torch.equal(pruner_only.first_logits, base.first_logits)


def test_chunked_prefill_equals_one_shot(tiny_llava_ov, frames):
    one, _ = stream_logits(tiny_llava_ov, pipeline(fpc=len(frames)), frames)
    for fpc in (1, 2, 4):  # 4 leaves a 2-frame leftover chunk
        chunked, s = stream_logits(tiny_llava_ov, pipeline(fpc=fpc), frames)
        torch.testing.assert_close(chunked.first_logits, one.first_logits, atol=1e-5, rtol=1e-5)
        assert s.chunks_done == -(-len(frames) // fpc)


def test_two_interleaved_streams_equal_separate_runs(tiny_llava_ov):
    a_frames, b_frames = random_frames(4, seed=1), random_frames(4, seed=2)
    pipe = pipeline(STC)
    sep_a, _ = stream_logits(tiny_llava_ov, pipe, a_frames)
    sep_b, _ = stream_logits(tiny_llava_ov, pipe, b_frames)
    with pipe.apply(tiny_llava_ov) as bound:
        a, b = bound.stream(), bound.stream()
        a.prefill_ids(PREFIX)
        b.prefill_ids(PREFIX)
        for i in range(4):
            a.add_frames(a_frames[i : i + 1])
            b.add_frames(b_frames[i : i + 1])
        ans_a, ans_b = a.ask(QUESTION, 3), b.ask(QUESTION, 3)
    assert torch.equal(ans_a.first_logits, sep_a.first_logits)
    assert torch.equal(ans_b.first_logits, sep_b.first_logits)
    assert ans_a.token_ids == sep_a.token_ids


def test_stc_stream_counts_and_reset(tiny_llava_ov, frames):
    pipe = pipeline(STC)
    with pipe.apply(tiny_llava_ov) as bound:
        s = bound.stream()
        stats = s.add_frames(frames)
        assert [c.pre_prefill for c in stats] == [(16, 6)] * len(frames)
        assert [c.vit_tokens for c in stats] == [64] * len(frames)
        assert s.llm.length == 6 * len(frames)
        assert bound.planned_tokens(Stage.PRE_PREFILL, 1) == 6
        first = s.ask(QUESTION, 2)
        assert s.llm.length == 6 * len(frames), "ask() must rewind the cache"
        again = s.ask(QUESTION, 2)
        assert torch.equal(first.first_logits, again.first_logits)
        s.reset()
        assert s.llm.length == 0 and s.chunks_done == 0
        s.add_frames(frames)
        assert torch.equal(s.ask(QUESTION, 2).first_logits, first.first_logits)


def test_cacher_reuses_reference_in_stream(tiny_llava_ov, frames):
    """Non-reference chunks differ from the plain tower; reference chunks are bit-identical to it."""
    base = pipeline()
    cached = pipeline({"pre_vit_block": STC["pre_vit_block"]})
    with base.apply(tiny_llava_ov) as b1:
        plain = [b1.stream().encode_only(frames[i : i + 1]).tokens for i in range(len(frames))]
    with cached.apply(tiny_llava_ov) as b2:
        s = b2.stream()
        got = [s.encode_only(frames[i : i + 1]).tokens for i in range(len(frames))]
    for i, (p, g) in enumerate(zip(plain, got, strict=True)):
        if i % 2 == 0:
            assert torch.equal(p, g)
        else:
            assert not torch.equal(p, g)


def test_from_pretrained_roundtrip(tmp_path, frames):
    from tokencompress import load_model

    model = build_tiny_llava_ov(seed=3)
    model.save_pretrained(tmp_path)
    from tokencompress.models.tokenizer import byte_tokenizer

    byte_tokenizer("llava_onevision").save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert not loaded.random_weights
    for a, b in zip(model.state_dict().values(), loaded.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pipeline(STC).apply(loaded.model) as bound:
        s = bound.stream(tokenizer=loaded.tokenizer)
        s.add_frames(frames[:2])
        ans = s.ask("what?", max_new_tokens=4)
    assert len(ans.token_ids) <= 4
    assert np.isfinite(ans.first_logits.numpy()).all()
