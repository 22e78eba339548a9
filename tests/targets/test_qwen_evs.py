"""EVS on the Qwen targets: kept tokens carry exactly the M-RoPE positions they had in an unpruned
run (the stock model's own ``get_rope_index`` of the whole one-shot input), per-chunk counts follow
the streaming rule, and EVS runs on the merged (pre_prefill) grid, whose frames are 2-frame slices."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tests.targets.test_qwen3_vl as q3
import tests.targets.test_qwen_vl as q2
from tokencompress import Stage
from tokencompress.strategies.evs import retained_count

PROPS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RATES = st.sampled_from([0.0, 0.3, 0.5, 0.75, 0.9])


def _spy(bound, seen):
    original = bound.target.visual_positions

    def spy(state, tokens):
        pos = original(state, tokens)
        seen.append((tokens.source.clone(), pos.clone()))
        return pos

    bound.target.visual_positions = spy


@PROPS
@given(target_index=st.integers(0, 1), q=RATES, fpc=st.sampled_from([2, 4]))
def test_evs_keeps_unpruned_positions_on_qwen2_and_qwen25(target_index, q, fpc):
    target_cls = q2.TARGETS[target_index]
    model = q2.tiny(target_cls)
    stages = {"post_vit": [{"strategy": "evs", "video_pruning_rate": q}]}
    frames = q2.FRAMES[:4]
    seen: list = []
    with q2.pipeline(stages, fpc=fpc).apply(model) as bound:
        assert bound.by_stage[Stage.PRE_PREFILL] and not bound.by_stage[Stage.POST_VIT]
        _spy(bound, seen)
        s = bound.stream()
        s.prefill_ids(q2.PREFIX)
        s.add_frames(frames)
        full = q2.plain_positions(model, bound.target, frames, fpc)
    slices, per = fpc // 2, 16
    start = len(q2.PREFIX)
    for c, (source, pos) in enumerate(seen):
        n = slices * per
        assert source.numel() == retained_count(per, slices, q, first=c == 0)
        if c == 0:
            assert torch.equal(source[:per], torch.arange(per))  # the stream's first slice is kept whole
        want = torch.cat(
            [full[:, start : start + 1], full[:, start + 1 + source], full[:, start + n + 1 : start + n + 2]],
            1,
        )
        assert torch.equal(pos[:, 0], want)
        start += n + 2
    assert s.llm.next_position == int(full[0, start])


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(q=RATES, fpc=st.sampled_from([2, 6]))
def test_evs_keeps_unpruned_positions_on_qwen3(q, fpc):
    """Per-slice groups: a slice that keeps no token keeps its timestamp and markers (quirk Q16)."""
    stages = {"post_vit": [{"strategy": "evs", "video_pruning_rate": q}]}
    seen: list = []
    with q3.pipeline(stages, fpc=fpc).apply(q3.tiny()) as bound:
        _spy(bound, seen)
        s = bound.stream(tokenizer=q3.TOKENIZER)
        s.prefill_ids(q3.PREFIX)
        s.add_frames(q3.FRAMES)
    full, is_video = q3.full_layout(True)
    video_cols = torch.nonzero(is_video).squeeze(1)
    slices, per = fpc // 2, q3.PER_SLICE
    start = len(q3.PREFIX)
    for c, (source, pos) in enumerate(seen):
        assert source.numel() == retained_count(per, slices, q, first=c == 0)
        last_video = video_cols[(c + 1) * slices * per - 1]
        span = torch.arange(start, int(last_video) + 2)
        keep = ~is_video[span]
        keep[(video_cols[c * slices * per + source] - start)] = True
        assert torch.equal(pos[:, 0], full[:, span[keep]])
        start = int(span[-1]) + 1
    assert s.llm.next_position == int(full[0, start])
