"""A few hundred frames: the resident cache stays bounded and no per-stream state grows, except
ReKV's host block store, which grows by exactly one frame's KV per frame."""

from __future__ import annotations

import pytest
import torch

from tests.support.models import random_frames
from tests.support.pipelines import STC
from tokencompress import Pipeline

pytestmark = pytest.mark.slow

FRAMES = 40
VARIANTS = {
    "rekv": ({"strategy": "rekv", "n_local": 32, "topk": 2}, {}, 16),
    "rekv_stc": ({"strategy": "rekv", "n_local": 24, "topk": 4}, STC, 6),
    "sliding_window": ({"strategy": "sliding_window", "n_local": 32}, {}, 16),
}


def state_bytes(obj, seen=None) -> int:
    """Bytes of every tensor reachable from a strategy state (dataclasses, dicts, lists)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(state_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(state_bytes(v, seen) for v in obj)
    if hasattr(obj, "__dict__"):
        return state_bytes(vars(obj), seen)
    return 0


@pytest.mark.parametrize("name", list(VARIANTS))
def test_long_stream_stays_bounded(tiny_llava_ov, name):
    kv, stages, per_frame = VARIANTS[name]
    pipe = Pipeline.from_dict({"stages": {**stages, "kv_cache": [kv]}})
    video = random_frames(FRAMES, seed=9, h=24, w=24)
    rows = []
    with pipe.apply(tiny_llava_ov) as bound:
        s = bound.stream()
        s.prefill_ids(torch.tensor([11, 12, 13, 14, 15]))
        for i in range(FRAMES):
            (c,) = s.add_frames(video[i])
            device = s.bytes_by_device()[str(s.target.device)]
            if name.startswith("rekv"):  # the host store and the representatives ([frames, kvh, d]) grow
                device -= s.kv.stored_bytes(allocated=True) + sum(m.store.reps.nbytes for m in s.kv.layers)
            rows.append((c.cache_tokens, c.stored_tokens, device, state_bytes(s.states), s.llm.next_position))
            if i == FRAMES // 2:
                s.ask(torch.tensor([21, 22]), max_new_tokens=2)
    filled = rows[12:]  # the window fills within 6 frames; STC's references settle after 2 chunks
    assert len({r[0] for r in filled}) == 1, f"resident cache tokens vary: {sorted({r[0] for r in filled})}"
    assert filled[0][0] <= kv["n_local"] + 5 + (per_frame if name == "sliding_window" else 0)
    assert len({r[2] for r in filled}) == 1, "device-side memory grows"
    # the Cacher's state alternates (reference chunk, then its derived caches), but never grows
    half = len(filled) // 2
    assert {r[3] for r in filled[half:]} <= {r[3] for r in filled[:half]}, "strategy state grows"
    if name.startswith("rekv"):
        assert [r[1] for r in rows[12:]] == [per_frame * (i + 1) for i in range(12, FRAMES)]
        reps = [sum(m.store.reps.nbytes for m in s.kv.layers)]
        assert reps == [FRAMES * 2 * 2 * 16 * 4]  # frames x layers x kvh x d x fp32: 256 B per frame
    else:
        assert max(r[4] for r in filled) <= 5 + kv["n_local"] + per_frame
