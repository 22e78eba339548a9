"""streamingtom_oqm end to end on the tiny LLaVA-OV (CTR ahead of it, a prompt, chunks, questions), its
footprint against ReKV, and the build-time refusals (bad parameters, variable counts, scaled RoPE)."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from tests.support.models import random_frames
from tokencompress import Pipeline
from tokencompress.api.errors import BudgetError, CompatibilityError, ConfigError
from tokencompress.strategies.streamingtom_oqm.strategy import StreamingTomOqmParams
from tokencompress.targets.qwen.qwen2_vl import Qwen2VLTarget

pytestmark = pytest.mark.slow

PREFIX = torch.tensor([11, 12, 13, 14, 15])
QUESTION = torch.tensor([21, 22, 23])
FRAMES = random_frames(8, seed=3)
CTR = {"strategy": "streamingtom_ctr", "tokens_per_frame": 8}
"""8 of the tiny LLaVA-OV's 16 tokens a frame: one OQM group a frame (G = 8, 4 codes per byte pair)."""


def pipe(kv: dict | None, fpc: int = 2, ctr: bool = True) -> Pipeline:
    stages: dict = {"pre_prefill": [CTR]} if ctr else {}
    if kv is not None:
        stages["kv_cache"] = [kv]
    return Pipeline.from_dict({"stream": {"frames_per_chunk": fpc, "fps": 2}, "stages": stages})


def run(model, pipeline: Pipeline, questions: int = 1):  # type: ignore[no-untyped-def]
    with pipeline.apply(model) as bound:
        s = bound.stream()
        s.prefill_ids(PREFIX)
        stats = s.add_frames(FRAMES) + s.flush()
        answers = [s.ask(QUESTION, max_new_tokens=3) for _ in range(questions)]
        return answers, stats, s


def oqm(**params) -> dict:
    return {"strategy": "streamingtom_oqm", **params}


def test_a_memory_that_holds_everything_answers_like_the_plain_stream(tiny_llava_ov) -> None:
    """Window and budget over the whole video, stream positions, question at P..: only the 4-bit
    rounding of the stored KV separates the answer from the plain stream's."""
    (plain,), _, _ = run(tiny_llava_ov, pipe(None))
    big = oqm(
        window_tokens=1024, retrieval_max_tokens=1024, positions="absolute", retrieval_pass="consistent"
    )
    (full,), _, s = run(tiny_llava_ov, pipe(big))
    assert s.kv.memory_stats()["retrieved_groups_per_question"] == [len(FRAMES)]
    assert s.kv.retrieved() == [list(range(len(FRAMES)))] * 2
    a, b = plain.first_logits, full.first_logits
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.99
    (eight,), _, _ = run(tiny_llava_ov, pipe({**big, "bits": 2}))
    assert (eight.first_logits - a).abs().max() >= (b - a).abs().max()  # 2 bits are coarser than 4


def test_budget_window_and_questions(tiny_llava_ov) -> None:
    """Two frames' window, a three-group budget: bounded resident tokens, three groups a question per
    layer, questions leave the memory as it was (same answer twice, same store)."""
    answers, stats, s = run(tiny_llava_ov, pipe(oqm(window_tokens=16, retrieval_max_tokens=17)), questions=2)
    assert [c.stored_tokens for c in stats] == [16, 32, 48, 64]
    assert max(c.cache_tokens for c in stats) <= len(PREFIX) + 16
    assert torch.equal(answers[0].first_logits, answers[1].first_logits)
    assert answers[0].token_ids == answers[1].token_ids
    stats_kv = s.kv.memory_stats()
    assert stats_kv["retrieved_groups_per_question"] == [3, 3] and stats_kv["stored_groups"] == 8
    assert stats_kv["quantized_bytes"] == s.kv.stored_bytes() > 0
    assert all(len(frames) == 3 for frames in s.kv.retrieved())
    assert s.kv.layers[0].answer_k is None and s.cache_tokens() <= len(PREFIX) + 16


def test_the_reference_position_rule_differs_from_stream_positions(tiny_llava_ov) -> None:
    """Once the window is full the reference restarts every chunk at n_init + W (quirk Q11)."""
    _, _, s = run(tiny_llava_ov, pipe(oqm(window_tokens=16)))
    layer = s.kv.layers[0]
    assert layer.next_positions(16, 16).tolist() == list(range(5 + 16, 5 + 32))
    _, _, t = run(tiny_llava_ov, pipe(oqm(window_tokens=16, positions="absolute")))
    assert t.kv.layers[0].next_positions(16, 16)[0] == 5 + 64
    assert s.kv.bounds_positions and not t.kv.bounds_positions


def test_stored_bytes_are_at_most_three_tenths_of_rekv(tiny_llava_ov) -> None:
    """The same frames (no CTR) in ReKV's full-precision blocks and in OQM's 4-bit groups."""
    _, _, r = run(tiny_llava_ov, pipe({"strategy": "rekv", "n_local": 32, "topk": 2}, ctr=False))
    _, _, o = run(tiny_llava_ov, pipe(oqm(window_tokens=32), ctr=False))
    assert r.kv.stored_tokens() == o.kv.stored_tokens() == 16 * len(FRAMES)
    assert o.kv.stored_bytes() <= 0.3 * r.kv.stored_bytes()
    assert "cpu" in o.bytes_by_device() and o.bytes_by_device()["cpu"] == o.kv.device_bytes(o.llm)


def test_text_after_the_first_frame_is_refused(tiny_llava_ov) -> None:
    with pipe(oqm()).apply(tiny_llava_ov) as bound:
        s = bound.stream()
        s.prefill_ids(PREFIX)
        s.add_frames(FRAMES[:2])
        with pytest.raises(ConfigError, match="text prefilled after the first frame"):
            s.prefill_ids(PREFIX)
        with pytest.raises(ConfigError, match="use rekv for caller-given frames"):
            s.ask(QUESTION, 2, frames=[0])


def test_rope_other_than_1d_or_m_rope_is_refused() -> None:
    """Qwen's M-RoPE runs (tests/strategies/test_streamingtom_oqm_mrope.py); scaled RoPE is refused."""
    from dataclasses import replace

    from tokencompress.api.kv_cache_strategy import KVBuild
    from tokencompress.strategies.streamingtom_oqm.strategy import StreamingTomOqm

    layout = Qwen2VLTarget(Qwen2VLTarget.tiny_model()).decoder_layout()
    assert layout is not None and layout.rope_type == "mrope"
    build = KVBuild("qwen2_vl", layout, 16, None, 1, extra_tokens_per_chunk=2)
    StreamingTomOqm(StreamingTomOqmParams()).check_build(build)
    with pytest.raises(
        CompatibilityError, match="default 1-D RoPE and Qwen's M-RoPE; target 'x' uses 'yarn'"
    ):
        StreamingTomOqm(StreamingTomOqmParams()).check_build(
            replace(build, target="x", layout=replace(layout, rope_type="yarn"))
        )


@pytest.mark.parametrize(
    ("kv", "stages", "error", "needle"),
    [
        (oqm(group_size=5), None, BudgetError, r"group_size = 5 does not divide the 8 tokens"),
        (oqm(group_size=1), None, BudgetError, r"not a multiple of the 2 codes one byte holds"),
        (oqm(bits=2, group_size=2), None, BudgetError, r"not a multiple of the 4 codes one byte holds"),
        (
            oqm(window_tokens=12),
            None,
            BudgetError,
            r"window_tokens = 12 is not a multiple of the group size 8",
        ),
        (oqm(), {"post_vit": [{"strategy": "evs", "video_pruning_rate": 0.5}]}, CompatibilityError, "'evs'"),
    ],
)
def test_bad_builds_are_refused_naming_the_field(tiny_llava_ov, kv, stages, error, needle) -> None:
    pipeline = pipe(kv) if stages is None else Pipeline.from_dict({"stages": {**stages, "kv_cache": [kv]}})
    with pytest.raises(error, match=needle):
        pipeline.bind(tiny_llava_ov)


def test_bits_other_than_two_or_four_are_refused() -> None:
    with pytest.raises(ValidationError, match="bits"):
        StreamingTomOqmParams(bits=3)
    with pytest.raises(ConfigError, match=r"bits"):
        Pipeline.from_dict({"stages": {"kv_cache": [oqm(bits=8)]}})


def test_run_summary_reports_the_store_and_retrieved_groups(tiny_llava_ov) -> None:
    from types import SimpleNamespace

    from tokencompress.cli.run_command import _kv_summary, _memory_text

    _, _, s = run(tiny_llava_ov, pipe(oqm(window_tokens=16, retrieval_max_tokens=17)))
    summary = _kv_summary(SimpleNamespace(kv=s.kv, bound=s.bound, bytes_by_device=s.bytes_by_device))
    stats = summary["kv_memory"]
    assert stats["bits"] == 4 and stats["questions"] == 1 and stats["retrieved_groups_per_question"] == [3]
    assert summary["stored_bytes"] == stats["quantized_bytes"]
    mib = stats["quantized_bytes"] / 2**20
    assert _memory_text(stats) == f"; 4-bit store {mib:.2f} MiB, 3 groups retrieved per layer"
