"""``dycoke_kv`` end to end on tiny random-weight models: alone, on a sliding window and on rekv
(LLaVA-OneVision), alone and on a sliding window on Qwen2-VL (M-RoPE: keys keep their rotation).

With p = 0 every step keeps every visual entry, so every decode step's logits equal the plain
pipeline's bit for bit; with p = 0.7 the pruned steps attend to fewer entries and the memory is the
same after the question as before it.
"""

from __future__ import annotations

import copy

import pytest
import torch

from tests.strategies.test_e2e_kv_cache import memory_snapshot
from tests.support.models import random_frames
from tokencompress import Pipeline
from tokencompress.cli.run_command import _kv_summary, _policy_text
from tokencompress.targets.qwen.qwen2_vl import Qwen2VLTarget

pytestmark = pytest.mark.slow

PREFIX = torch.tensor([11, 12, 13, 14, 15])
QUESTION = torch.tensor([21, 22, 23])
MEMORIES = {
    "none": [],
    "sliding_window": [{"strategy": "sliding_window", "n_local": 80}],
    "rekv": [{"strategy": "rekv", "n_local": 96, "topk": 2}],
}


def pipe(kv: list, target_options: dict | None = None) -> Pipeline:
    doc = {"stream": {"frames_per_chunk": 2, "fps": 2}, "stages": {"kv_cache": kv} if kv else {}}
    if target_options:
        doc["target_options"] = target_options
    return Pipeline.from_dict(doc)


def answer(model, pipeline, frames, questions: int = 1):
    """Answers and every lm_head output while answering (one per prompt and decode step)."""
    logits: list[torch.Tensor] = []
    hook = model.lm_head.register_forward_hook(lambda m, i, o: logits.append(o.detach().clone()))
    try:
        with pipeline.apply(model) as bound:
            s = bound.stream()
            s.prefill_ids(PREFIX)
            s.add_frames(frames)
            answers = [s.ask(QUESTION, max_new_tokens=6) for _ in range(questions)]
            return answers, logits, s
    finally:
        hook.remove()


def policy(p: float, **extra) -> dict:
    return {"strategy": "dycoke_kv", "l": 1, "p": p, **extra}


@pytest.mark.parametrize("memory", list(MEMORIES))
def test_keeping_every_visual_entry_answers_exactly_like_the_plain_pipeline(tiny_llava_ov, memory):
    frames = random_frames(6, seed=3)
    plain, plain_logits, _ = answer(tiny_llava_ov, pipe(MEMORIES[memory]), frames)
    kept, kept_logits, s = answer(tiny_llava_ov, pipe(MEMORIES[memory] + [policy(0.0)]), frames)
    assert kept[0].token_ids == plain[0].token_ids
    assert len(kept_logits) == len(plain_logits) and all(
        torch.equal(a, b) for a, b in zip(kept_logits, plain_logits, strict=True)
    )
    stats = s.decoder.policy_stats()
    assert stats["decode_steps"] == len(plain[0].token_ids) - 1 and stats["pruned_steps"] >= 1
    assert stats["visual_kept_mean"] == stats["visual_entries_mean"] > 0


@pytest.mark.parametrize("memory", list(MEMORIES))
def test_pruning_attends_to_fewer_visual_entries_and_leaves_the_memory_alone(tiny_llava_ov, memory):
    frames = random_frames(6, seed=3)
    pipeline = pipe(MEMORIES[memory] + [policy(0.7)])
    with pipeline.apply(tiny_llava_ov) as bound:
        s = bound.stream()
        s.prefill_ids(PREFIX)
        s.add_frames(frames)
        before, kv_fields = memory_snapshot(s), copy.copy(vars(s.kv)) if s.kv is not None else {}
        s.ask(QUESTION, max_new_tokens=6)
        after = memory_snapshot(s)
        assert len(before) == len(after) and all(
            torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
            for a, b in zip(before, after, strict=True)
        )
        assert s.kv is None or s.kv.decode_step is None and set(vars(s.kv)) == set(kv_fields)
    stats = s.decoder.policy_stats()
    tpf = 16  # tiny LLaVA-OV: tokens per frame at pre_prefill
    visual = {"none": 6 * tpf, "sliding_window": None, "rekv": 2 * tpf}[memory]
    if visual is not None:
        assert stats["visual_entries_mean"] == visual
    first = stats["visual_kept_last_answer"][0]  # the first step always prunes: int(n * 0.3) kept
    assert first == int(stats["visual_entries_mean"] * (1 - 0.7)) < stats["visual_entries_mean"]
    summary = _kv_summary(s)
    assert summary["decode_policy"]["strategy"] == "dycoke_kv"
    assert "dycoke_kv: 5 decode steps" in _policy_text(summary["decode_policy"])


def test_the_sliding_window_mask_follows_the_window(tiny_llava_ov):
    """After evictions the policy's visual entries are the video tokens still in the window."""
    frames = random_frames(8, seed=4)
    with pipe(MEMORIES["sliding_window"] + [policy(0.7)]).apply(tiny_llava_ov) as bound:
        s = bound.stream()
        s.prefill_ids(PREFIX)
        s.add_frames(frames)
        assert s.llm.length == PREFIX.numel() + 80
        assert s.decoder.visual.tolist() == [False] * PREFIX.numel() + [True] * 80


def test_the_previous_step_is_forgotten_between_questions_unless_asked(tiny_llava_ov):
    frames = random_frames(4, seed=5)
    for reset, first_pruned in ((True, True), (False, None)):
        _, _, s = answer(tiny_llava_ov, pipe([policy(0.7, reset_per_question=reset)]), frames, questions=2)
        st = s.decoder.policy
        if first_pruned:  # with the reset every question's first step has no previous step: it prunes
            assert st.kept_last[0] < st.visual_seen / st.steps
        assert st.steps == 10


@pytest.fixture(scope="module")
def qwen():
    return Qwen2VLTarget.tiny_model(seed=1)


@pytest.mark.parametrize("memory", ["none", "sliding_window"])
def test_qwen_mrope_keeps_every_entry_exactly_and_masks_only_visual_rows(qwen, memory):
    frames = random_frames(6, seed=8)
    kv = {"none": [], "sliding_window": [{"strategy": "sliding_window", "n_local": 2048}]}[memory]
    opts = {"max_pixels": 112 * 112}  # 16 LLM tokens per 2-frame slice, + 2 delimiters
    plain, plain_logits, _ = answer(qwen, pipe(kv, opts), frames)
    kept, kept_logits, s = answer(qwen, pipe(kv + [policy(0.0)], opts), frames)
    assert kept[0].token_ids == plain[0].token_ids
    assert all(torch.equal(a, b) for a, b in zip(kept_logits, plain_logits, strict=True))
    assert int(s.decoder.visual.sum()) == s.llm.visual_tokens == 3 * 16  # delimiters are not video
    assert s.decoder.visual.numel() == s.llm.length
    _, _, pruned = answer(qwen, pipe(kv + [policy(0.7)], opts), frames)
    assert pruned.decoder.policy_stats()["visual_kept_last_answer"][0] == int(48 * (1 - 0.7))


def test_infinipot_v_compressed_cache_masks_the_kept_frames(tiny_llava_ov):
    """On InfiniPot-V's compressed cache the visual entries are its budget of frames, and p = 0 is exact."""
    frames = random_frames(10, seed=6)
    kv = [{"strategy": "infinipot_v", "budget_frames": 6}]
    plain, plain_logits, _ = answer(tiny_llava_ov, pipe(kv), frames)
    kept, kept_logits, s = answer(tiny_llava_ov, pipe(kv + [policy(0.0)]), frames)
    assert kept[0].token_ids == plain[0].token_ids
    assert all(torch.equal(a, b) for a, b in zip(kept_logits, plain_logits, strict=True))
    assert s.kv.memory_stats()["compressions"] >= 1
    assert s.decoder.visual.numel() == s.llm.length and int(s.decoder.visual.sum()) == 6 * 16


def test_qwen_rekv_hosts_the_policy_at_its_three_axis_positions(qwen):
    """On M-RoPE, rekv's answer attention rotates at the re-placed 3-D positions: the policy's
    probabilities come from that same rotation, so keeping everything changes nothing."""
    frames = random_frames(6, seed=8)
    kv = [{"strategy": "rekv", "n_local": 64, "topk": 2}]
    opts = {"max_pixels": 112 * 112}
    plain, plain_logits, _ = answer(qwen, pipe(kv, opts), frames)
    kept, kept_logits, _ = answer(qwen, pipe(kv + [policy(0.0)], opts), frames)
    assert kept[0].token_ids == plain[0].token_ids
    assert all(torch.equal(a, b) for a, b in zip(kept_logits, plain_logits, strict=True))
    _, _, pruned = answer(qwen, pipe(kv + [policy(0.7)], opts), frames)
    assert pruned.decoder.policy_stats()["visual_kept_last_answer"][0] == int(2 * 16 * (1 - 0.7))
