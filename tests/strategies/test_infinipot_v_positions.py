"""infinipot_v ``positions: compact`` on the tiny LLaVA-OV (1-D RoPE): bounded positions.

The re-rotation is checked against the decoder itself: keys moved from their old positions equal
the keys a fresh prefill at the new positions caches (layer 0 with any positions per KV head, every
layer for a shift of the whole sequence), to 1e-6 absolute in float32 (measured: 1.2e-7 on keys of
magnitude up to 0.6; a rotation by the float32 angle of the difference instead is off by 2.8e-4 from
old positions near 30,000, which the ``far`` examples catch). End to end the first
compaction is the reference's compression with its keys moved, a stream runs far past a small
``max_position_embeddings`` where ``keep`` is refused, a budget larger than the stream is the plain
pipeline, a failed chunk leaves the memory as it was, and the position guard's hint names a step
that runs past the limit.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.stream.test_transactions import same_stream
from tests.support.models import random_frames
from tokencompress import Pipeline
from tokencompress.api.errors import CompatibilityError, PluginFault
from tokencompress.api.target import cache_argument
from tokencompress.kernels.rope import move
from tokencompress.stream.positions import PositionLimitError, PositionWarning
from tokencompress.targets.qwen.qwen2_vl import Qwen2VLTarget

pytestmark = pytest.mark.slow

PREFIX = torch.tensor([11, 12, 13, 14, 15])
QUESTION = torch.tensor([21, 22, 23])
TOL = 1e-6
SMALL = {"strategy": "infinipot_v", "budget_frames": 3, "query_ratio": 0.34}
"""Three frames' worth (16 tokens each on the tiny model): compressed to two before every chunk from
the fourth frame on."""


def pipe(kv: dict[str, Any] | None = None) -> Pipeline:
    stages = {"kv_cache": [kv]} if kv else {}
    return Pipeline.from_dict({"stream": {"frames_per_chunk": 1, "fps": 2}, "stages": stages})


def limited(model, limit: int):
    out = copy.deepcopy(model)
    out.config.get_text_config().max_position_embeddings = limit
    return out


def _layer_keys(model, embeds: torch.Tensor, positions: torch.Tensor) -> list[torch.Tensor]:
    """Every decoder layer's cached keys ``[1, kvh, n, d]`` after one prefill at ``positions`` ``[n]``."""
    from transformers import DynamicCache

    lm = model.model.language_model
    cache = DynamicCache(config=model.config.get_text_config())
    with torch.inference_mode():
        lm(
            inputs_embeds=embeds[None],
            position_ids=positions[None],
            use_cache=True,
            **{cache_argument(lm): cache},
        )
    return [layer.keys.clone() for layer in cache.layers]


def _freqs(model) -> torch.Tensor:
    return model.model.language_model.rotary_emb.inv_freq.float()


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16), far=st.booleans())
def test_moved_keys_equal_a_fresh_prefill_at_the_new_positions_per_head(tiny_llava_ov, seed, far):
    """Layer 0's keys depend on the embeddings and the position only: any old positions (up to 30,000,
    where float32 angles are off by 1e-3 rad) moved to any new positions, one set per KV head."""
    g = torch.Generator().manual_seed(seed)
    n, hidden = 12, tiny_llava_ov.config.get_text_config().hidden_size
    embeds = torch.randn(n, hidden, generator=g)
    old = torch.randint(0, 30_000 if far else 500, (n,), generator=g)
    kvh = tiny_llava_ov.config.get_text_config().num_key_value_heads
    new = torch.randint(0, 500, (kvh, n), generator=g)
    moved = move(_layer_keys(tiny_llava_ov, embeds, old)[0], old, new, _freqs(tiny_llava_ov))
    for h in range(kvh):
        fresh = _layer_keys(tiny_llava_ov, embeds, new[h])[0]
        torch.testing.assert_close(moved[:, h], fresh[:, h], atol=TOL, rtol=0)


def test_a_shifted_sequence_moves_to_a_fresh_prefill_in_every_layer(tiny_llava_ov):
    """RoPE sees only distances, so a whole sequence prefilled at 3,000 + i and moved to 5 + i is the
    sequence prefilled at 5 + i, in every layer."""
    n, hidden = 20, tiny_llava_ov.config.get_text_config().hidden_size
    embeds = torch.randn(n, hidden, generator=torch.Generator().manual_seed(3))
    old, new = 3000 + torch.arange(n), 5 + torch.arange(n)
    far, near = _layer_keys(tiny_llava_ov, embeds, old), _layer_keys(tiny_llava_ov, embeds, new)
    for k_far, k_near in zip(far, near, strict=True):
        torch.testing.assert_close(move(k_far, old, new, _freqs(tiny_llava_ov)), k_near, atol=TOL, rtol=0)


def test_the_first_compaction_is_the_reference_compression_with_keys_moved(tiny_llava_ov):
    frames = random_frames(4, seed=8)
    p = len(PREFIX)
    with (
        pipe(SMALL).apply(tiny_llava_ov) as keep_bound,
        pipe({**SMALL, "positions": "compact"}).apply(tiny_llava_ov) as bound,
    ):
        keep, s = keep_bound.stream(), bound.stream()
        for x in (keep, s):
            x.prefill_ids(PREFIX)
            x.add_frames(frames)  # the fourth frame compresses three frames to two first
        tpf = bound.kv_build.tokens_per_frame
        assert s.kv.compressions == keep.kv.compressions == 1
        assert s.kv.positions.tolist() == list(range(p + 3 * tpf)) and s.llm.next_position == p + 3 * tpf
        assert keep.llm.next_position == p + 4 * tpf
        kept = slice(p, p + 2 * tpf)
        for i, (a, b) in enumerate(zip(s.llm.cache.layers, keep.llm.cache.layers, strict=True)):
            sel = keep.kv.last[i].kept  # [kvh, 2 * tpf]: the same choice (made before any move)
            assert torch.equal(sel, s.kv.last[i].kept)
            assert torch.equal(a.keys[:, :, :p], b.keys[:, :, :p])
            assert torch.equal(a.values[:, :, : p + 2 * tpf], b.values[:, :, : p + 2 * tpf])
            want = move(
                b.keys[:, :, kept], p + sel[None], torch.arange(p, p + 2 * tpf), _freqs(tiny_llava_ov)
            )
            torch.testing.assert_close(a.keys[:, :, kept], want, atol=TOL, rtol=0)


def test_compact_runs_far_past_the_limit_where_keep_is_refused(tiny_llava_ov):
    model = limited(tiny_llava_ov, 120)  # 5 + 16 per frame: keep passes it at the eighth frame
    frames = random_frames(40, seed=4)
    with pipe(SMALL).apply(model) as bound:
        s = bound.stream()
        s.prefill_ids(PREFIX)
        with (
            pytest.warns(PositionWarning),
            pytest.raises(PositionLimitError, match="max_position_embeddings 120"),
        ):
            for f in frames:
                s.add_frames(f[None])
        assert s.chunks_done == 7 and s.llm.next_position == 5 + 7 * 16
    with pipe({**SMALL, "positions": "compact"}).apply(model) as bound:
        s = bound.stream()
        s.prefill_ids(PREFIX)
        for f in frames:
            (stats,) = s.add_frames(f[None])
            assert s.llm.next_position == s.llm.length == stats.cache_tokens <= 5 + 3 * 16
            assert s.kv.positions.tolist() == list(range(s.llm.length))
        assert s.kv.compressions == 37
        s.ask(QUESTION, max_new_tokens=3)
        assert s.llm.next_position == 5 + 3 * 16


def test_a_budget_larger_than_the_stream_is_the_plain_pipeline(tiny_llava_ov):
    frames = random_frames(6, seed=5)
    answers = []
    for kv in (None, {"strategy": "infinipot_v", "budget_frames": 64, "positions": "compact"}):
        with pipe(kv).apply(tiny_llava_ov) as bound:
            s = bound.stream()
            s.prefill_ids(PREFIX)
            s.add_frames(frames)
            answers.append(s.ask(QUESTION, max_new_tokens=3))
    assert torch.equal(answers[0].first_logits, answers[1].first_logits)
    assert answers[0].token_ids == answers[1].token_ids


@pytest.mark.parametrize("where", ["decoder:1", "prefill"])
@pytest.mark.parametrize("keep_text", [False, True])
def test_a_failed_compacting_chunk_leaves_the_memory_as_it_was(tiny_llava_ov, monkeypatch, where, keep_text):
    frames = random_frames(6, seed=6)
    arm: dict[str, Any] = {}
    kv = {**SMALL, "positions": "compact", "keep_text": keep_text}
    with pipe(kv).apply(tiny_llava_ov) as bound:
        real_prefill = bound.target.prefill_visual

        def fire(at: str) -> None:
            if arm.get("where") == at:
                del arm["where"]
                raise RuntimeError("injected failure")

        def prefill(llm, tokens):
            real_prefill(llm, tokens)  # compressed, renumbered and prefilled when the failure comes
            fire("prefill")

        monkeypatch.setattr(bound.target, "prefill_visual", prefill)
        layer_1 = bound.target.decoder_layout().attention[1]
        handle = layer_1.register_forward_pre_hook(lambda *a, **k: fire("decoder:1"), with_kwargs=True)
        failed, clean = bound.stream(), bound.stream()
        for x in (failed, clean):
            x.prefill_ids(PREFIX)
            x.add_frames(frames[:3])
            x.prefill_ids(torch.tensor([31, 32]))  # text after the sinks: dropped or kept and moved
            x.add_frames(frames[3])  # the first compaction
        arm["where"] = where
        with pytest.raises(PluginFault, match="injected failure"):
            failed.add_frames(frames[4])  # compacts again, then fails
        assert "where" not in arm
        same_stream(failed, clean)
        for x in (failed, clean):
            x.add_frames(frames[5])
        same_stream(failed, clean)
        assert failed.kv.compressions == 2 and failed.kv.positions.tolist() == list(range(failed.llm.length))
        assert torch.equal(failed.ask(QUESTION, 1).first_logits, clean.ask(QUESTION, 1).first_logits)
        handle.remove()


def test_the_guard_names_a_step_that_runs_past_the_limit(tiny_llava_ov):
    """The plain stream is refused; the first step the message names (infinipot_v with positions
    compact and its default budget of 32 frames) then runs twice the limit's frames."""
    model = limited(tiny_llava_ov, 600)
    frames = random_frames(75, seed=7)  # 5 + 75 * 16 = 1,205 positions unbounded
    with pipe().apply(model) as bound:
        s = bound.stream()
        s.prefill_ids(PREFIX)
        with pytest.warns(PositionWarning), pytest.raises(PositionLimitError) as exc:
            for f in frames:
                s.add_frames(f[None])
    message = str(exc.value)
    first = re.search(r"stages\.kv_cache: \[(\{[^}]*\})\]", message)
    assert first is not None, message
    step = yaml.safe_load(first[1])
    assert step == {"strategy": "infinipot_v", "positions": "compact"}
    assert (
        "{strategy: infinipot_v, positions: compact}, {strategy: rekv}, {strategy: sliding_window}" in message
    )
    with pipe(step).apply(model) as bound:
        s = bound.stream()
        assert s.kv.bounds_positions and not s.decoder.guard.active
        s.prefill_ids(PREFIX)
        for f in frames:
            s.add_frames(f[None])
            assert s.llm.next_position <= 5 + 32 * 16 < 600
        s.ask(QUESTION, max_new_tokens=2)
    with pipe({"strategy": "infinipot_v"}).apply(model) as bound:  # keep: the guard stays on
        assert not bound.stream().kv.bounds_positions


def test_m_rope_targets_refuse_compact_and_the_guard_does_not_suggest_it():
    model = Qwen2VLTarget.tiny_model(seed=1)
    options = {"max_pixels": 112 * 112}
    kv = {"strategy": "infinipot_v", "positions": "compact"}
    with pytest.raises(CompatibilityError, match="M-RoPE.*use positions: keep"):
        Pipeline.from_dict({"target_options": options, "stages": {"kv_cache": [kv]}}).bind(model)
    bound = Pipeline.from_dict({"target_options": options}).bind(model)
    assert bound.position_fixes == ("{strategy: rekv}", "{strategy: sliding_window}")
