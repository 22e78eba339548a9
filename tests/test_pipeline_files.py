"""Every ready-made file in pipelines/ runs on the built-in model and a real clip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tokencompress import Pipeline, Stage
from tokencompress.models import build_default_model
from tokencompress.video import iter_frames, sample_video_path

PIPELINES = sorted((Path(__file__).parent.parent / "pipelines").glob("*.yaml"))


@pytest.fixture(scope="module")
def builtin():
    return build_default_model()


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return np.stack([f.rgb for f in iter_frames(sample_video_path("bikes.mp4"), fps=1.0, max_frames=4)])


@pytest.mark.slow
@pytest.mark.parametrize("path", PIPELINES, ids=[p.stem for p in PIPELINES])
def test_pipeline_file_runs(path: Path, builtin, clip: np.ndarray) -> None:
    pipe = Pipeline.from_yaml(path)
    with pipe.apply(builtin.model) as bound:
        stream = bound.stream(tokenizer=builtin.tokenizer)
        stats = stream.add_frames(clip)
        stats += stream.flush()
        assert sum(c.frames for c in stats) == len(clip)
        for c in stats:
            assert c.vit_tokens == 729 * c.frames and c.pre_prefill[0] == 196 * c.frames
            planned = bound.planned_tokens(Stage.PRE_PREFILL, c.frames)
            if planned is not None and not bound.by_stage[Stage.POST_VIT]:
                assert c.pre_prefill[1] == planned
        answer = stream.ask("What is happening?", max_new_tokens=3)
        assert len(answer.token_ids) <= 3


def test_every_strategy_has_a_ready_file() -> None:
    used = {
        s.name for p in PIPELINES for steps in Pipeline.from_yaml(p).config.stages.values() for s in steps
    }
    assert {"stc_cacher", "stc_pruner", "tome", "visionzip", "vidcom2", "rekv", "sliding_window"} <= used
