"""Failure paths: bad input loses nothing, errors leave no trace on the model or the stream."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from tests.conftest import random_frames
from tests.test_registry import KeepFirst, plugin
from tokencompress import Pipeline, Registry, Stage, TokenCompressError, VideoError, VisualTokens
from tokencompress.cli import main
from tokencompress.strategy import BlockStrategy

STC = {
    "pre_vit_block": [{"strategy": "stc_cacher", "update_token_ratio": 0.25, "cache_interval": 2}],
    "pre_prefill": [{"strategy": "stc_pruner", "tokens_per_frame": 6}],
}


def pipeline(stages=None, **extra) -> Pipeline:
    return Pipeline.from_dict({"stages": stages or {}, **extra})


def test_failed_question_leaves_the_cache_as_it_was(tiny_llava_ov, frames):
    with pipeline(STC, target_options={"newline": True}).apply(tiny_llava_ov) as bound:
        s = bound.stream()
        s.add_frames(frames[:2])
        length, position = s.llm.length, s.llm.next_position
        with pytest.raises(IndexError):
            s.ask(torch.tensor([5, 10**6]))  # an id outside the vocabulary fails mid-prefill
        assert (s.llm.length, s.llm.next_position) == (length, position)
        with pytest.raises(RuntimeError, match="tokenizer"):
            s.ask("no tokenizer on this stream")
        assert (s.llm.length, s.llm.next_position) == (length, position)


def test_bad_frames_are_refused_before_any_state_moves(tiny_llava_ov, frames):
    with pipeline(STC).apply(tiny_llava_ov) as bound:
        ref, s = bound.stream(), bound.stream()
        ref_stats = ref.add_frames(frames[:3])
        for bad in (frames[:1].astype(np.float32), frames[:1, :, :, :2], frames[0, :, :, 0]):
            with pytest.raises(VideoError, match="frames must be"):
                s.add_frames(bad)
        assert s.chunks_done == 0 and s.states[0].chunks_seen == 0
        stats = s.add_frames(frames[:3])
        assert [c.pre_prefill for c in stats] == [c.pre_prefill for c in ref_stats]
        assert torch.equal(
            s.ask(torch.tensor([5]), 1).first_logits, ref.ask(torch.tensor([5]), 1).first_logits
        )


def test_frame_size_may_change_inside_a_chunk(tiny_llava_ov):
    small, large = random_frames(1, h=40, w=50), random_frames(1, seed=1, h=60, w=80)
    with pipeline(STC, stream={"frames_per_chunk": 2}).apply(tiny_llava_ov) as bound:
        s = bound.stream()
        assert s.add_frames(small) == []
        (stats,) = s.add_frames(large)
        assert stats.frames == 2 and stats.pre_prefill == (32, 12)


def test_other_threads_see_the_stock_model_during_a_chunk(tiny_llava_ov, frames):
    """A chunk's strategies apply to the thread that runs it, never to another user of the model."""
    model = tiny_llava_ov
    tower = model.model.vision_tower
    pipe = pipeline(STC)
    target = pipe.bind(model).target
    pixels = target.preprocess(list(frames[:1]))
    with torch.inference_mode():
        plain = tower(pixels).last_hidden_state
    inside, started, release = {}, threading.Event(), threading.Event()
    with pipe.apply(model) as bound:
        s = bound.stream()
        s.add_frames(frames[:1])  # reference chunk: the cache now holds frame 0

        def hold_chunk() -> None:
            with bound.patch.chunk(bound.block_states(s.states), s.history and _next_chunk(s)):
                started.set()
                release.wait(10)

        worker = threading.Thread(target=hold_chunk)
        worker.start()
        started.wait(10)
        try:
            with torch.inference_mode():
                inside["out"] = tower(pixels).last_hidden_state
        finally:
            release.set()
            worker.join()
    assert torch.equal(inside["out"], plain)


def _next_chunk(stream):
    from tokencompress import ChunkInfo

    return ChunkInfo(stream.chunks_done, stream.frames_seen, 1)


def test_nested_apply_is_refused_and_leaves_no_hooks(tiny_llava_ov):
    stages = {**STC, "post_vit": [{"strategy": "visionzip", "dominant": 4, "contextual": 2}]}
    pipe = pipeline(stages)
    layers = pipe.bind(tiny_llava_ov).target.vit_layers()
    with pipe.apply(tiny_llava_ov):
        with pytest.raises(TokenCompressError, match="already inside"):
            with pipe.apply(tiny_llava_ov):
                pass
    assert not any(layer._forward_pre_hooks for layer in layers)
    assert not any("forward" in layer.__dict__ for layer in layers)


def test_strategy_whose_class_contradicts_its_stage_is_reported():
    wrong = type("WrongStage", (KeepFirst,), {"name": "wrong_stage", "stage": Stage.PRE_VIT_BLOCK})

    class NotABlock(BlockStrategy):
        name = "block_at_prefill"
        stage = Stage.PRE_PREFILL

        def block_forward(self, call, hidden, run_next):
            return run_next(hidden)

    reg = Registry(plugins=[plugin("pkg-wrong", [wrong]), plugin("pkg-block", [NotABlock])])
    assert sorted(f.package for f in reg.failures) == ["pkg-block", "pkg-wrong"]
    assert "must subclass BlockStrategy" in " ".join(f.error for f in reg.failures)
    assert {"wrong_stage", "block_at_prefill"}.isdisjoint(reg.strategies)


def test_disable_accepts_normalised_package_names():
    reg = Registry(disable="tokencompress_uniform")
    assert "uniform_grid" not in reg.strategies


def test_merge_counts_stay_exact_in_bfloat16():
    x = torch.randn(1, 300, 4).bfloat16()
    out = VisualTokens.from_frames(x, (15, 20)).merge(torch.zeros(300, dtype=torch.long))
    assert out.sizes.tolist() == [300.0] and out.tokens.dtype == torch.bfloat16
    torch.testing.assert_close(out.tokens[0].float(), x[0].float().mean(0), atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [(["--fps", "0"], "--fps must be > 0"), (["--json", "/nonexistent-dir/x.json"], "cannot write")],
)
def test_cli_run_bad_options_are_one_line_errors(tmp_path, capsys, extra, needle):
    from tests.conftest import build_tiny_llava_ov
    from tokencompress.tokenizer import byte_tokenizer

    build_tiny_llava_ov().save_pretrained(tmp_path)
    byte_tokenizer("llava_onevision").save_pretrained(tmp_path)
    capsys.readouterr()  # drop the save_pretrained progress bar
    args = ["run", "pipelines/baseline.yaml", "--model", str(tmp_path), "--max-frames", "1", "--no-progress"]
    code = main([*args, *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err


def test_pruner_after_an_adaptive_strategy(tiny_llava_ov):
    stages = {
        "pre_prefill": [
            {"strategy": "vidcom2", "retention_ratio": 0.5},
            {"strategy": "stc_pruner", "tokens_per_frame": 4},
        ]
    }
    with pipeline(stages, stream={"frames_per_chunk": 4}).apply(tiny_llava_ov) as bound:
        (stats,) = bound.stream().add_frames(random_frames(4, seed=3))
    assert stats.pre_prefill[1] <= 16 and stats.pre_prefill[1] >= 4
