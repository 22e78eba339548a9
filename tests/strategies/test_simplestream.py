"""SimpleStream (pipelines/simplestream.yaml): at question time the cache holds exactly the system
prompt and the tokens of the last 4 frames, built from sliding_window's ``window_chunks``.

Layer 0's values depend on each token alone (``v = W_v · norm(x)``, no rotary), so comparing them
with an unbounded run of the same frames identifies which tokens the cache holds."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from tests.support.models import random_frames
from tests.support.paths import PIPELINES
from tokencompress import Pipeline, Registry
from tokencompress.strategies.sliding_window import SlidingWindow

pytestmark = pytest.mark.slow

FILE = PIPELINES / "simplestream.yaml"
PREFIX = torch.tensor([11, 12, 13, 14, 15])  # stands for the system prompt: the only sinks
FRAMES = random_frames(7, seed=5)
_MODEL: list[torch.nn.Module] = []


def tiny() -> torch.nn.Module:
    if not _MODEL:
        _MODEL.append(Registry().target("llava_onevision").tiny_model())
    return _MODEL[0]


def _run(stages: dict):
    """(values of layer 0 at question time ``[T, ...]``, tokens per chunk, cache length the question saw)."""
    pipe = Pipeline.from_dict(
        {"target": "llava_onevision", "stream": {"frames_per_chunk": 1}, "stages": stages}
    )
    seen: list[int] = []
    with pipe.apply(tiny()) as bound:
        s = bound.stream()
        s.prefill_ids(PREFIX)
        stats = s.add_frames(FRAMES)
        values = s.llm.cache.layers[0].values[0].transpose(0, 1).clone()  # [T, heads, dh]
        if s.decoder.kv is not None:
            original = s.decoder.kv.retrieve

            def spy(target, llm, ids, frames=None):
                seen.append(llm.length)
                return original(target, llm, ids, frames)

            s.decoder.kv.retrieve = spy
        answer = s.ask(torch.tensor([5, 6, 7]), max_new_tokens=2)
        assert bool(torch.isfinite(answer.first_logits).all())
    per_chunk = [c.pre_prefill[1] + bound.target.kv_extra_tokens_per_chunk() for c in stats]
    return values, per_chunk, seen


@pytest.mark.parametrize("evs", [False, True], ids=["full_frames", "after_evs"])
def test_only_the_system_prompt_and_the_last_four_frames_are_cached(evs):
    config = Pipeline.from_yaml(FILE).config
    assert config.stream.frames_per_chunk == 1
    window = config.stages["kv_cache"][0]
    token_stages = {"post_vit": [{"strategy": "evs", "video_pruning_rate": 0.75}]} if evs else {}
    full, per_chunk, _ = _run(token_stages)
    got, per_chunk_again, seen = _run(
        {
            **token_stages,
            "kv_cache": [{"strategy": window.name, **window.params.model_dump(exclude_unset=True)}],
        }
    )
    assert per_chunk == per_chunk_again and len(per_chunk) == len(FRAMES)
    if evs:
        assert len(set(per_chunk)) > 1  # chunks of different sizes: the window counts chunks, not tokens
    p = len(PREFIX)
    last4 = sum(per_chunk[-4:])
    assert seen == [p + last4]  # what the question attends to
    assert got.shape[0] == p + last4
    assert torch.equal(got, torch.cat([full[:p], full[full.shape[0] - last4 :]]))


def test_window_chunks_equals_the_token_window_of_the_same_size():
    """With equal chunks, 4 chunks are the token window of 4 chunks' tokens, bit for bit."""
    got, per_chunk, _ = _run({"kv_cache": [{"strategy": "sliding_window", "window_chunks": 4}]})
    same, _, _ = _run({"kv_cache": [{"strategy": "sliding_window", "n_local": 4 * per_chunk[0]}]})
    assert torch.equal(got, same)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"window_chunks": 0}, "window_chunks"), ({"window_chunks": 4, "n_local": 9}, "not both")],
)
def test_window_chunks_errors(kwargs, field):
    with pytest.raises(ValidationError, match=field):
        SlidingWindow(**kwargs)
