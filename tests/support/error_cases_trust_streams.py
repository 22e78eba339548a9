"""Cases of docs/errors.md: one caller per stream, question and id arguments, frames of any dtype or
device, rotated videos, strategy contracts at run time."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
import torch

from tests.support.errors import Ctx, case, pipeline_api
from tests.support.strategy_contract_fakes import contract_pipeline
from tokencompress.api.errors import PluginFault


# ----------------------------------------------------------- one caller at a time
@case("stream-busy")
def _(c: Ctx):
    with pipeline_api({}).apply(c.tiny_model()) as bound:
        s = bound.stream()
        inside, release = threading.Barrier(2, timeout=60), threading.Event()
        real = bound.encode_chunk

        def held(*args: Any) -> Any:
            inside.wait()
            assert release.wait(60)
            return real(*args)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(bound, "encode_chunk", held)
            thread = threading.Thread(target=lambda: s.add_frames(c.frames[:1]), daemon=True)
            thread.start()
            inside.wait()  # the first thread is inside its chunk
            try:
                result = c.api(lambda: s.add_frames(c.frames[1:2]))
            finally:
                release.set()
                thread.join(60)
        assert s.chunks_done == 1
    return result


# -------------------------------------------------------------- ask / prefill_ids
def _ask(c: Ctx, *args: Any, stages: dict | None = None, **kwargs: Any) -> tuple[None, str]:
    with pipeline_api(stages or {}).apply(c.tiny_model()) as bound:
        s = bound.stream()
        s.add_frames(c.frames[:2])
        length = s.llm.length
        result = c.api(lambda: s.ask(*args, **kwargs))
        assert s.llm.length == length and s.chunks_done == 2
    return result


@case("ask-max-new-tokens")
def _(c: Ctx):
    return _ask(c, torch.tensor([5]), max_new_tokens=-5)


@case("ask-ids-float")
def _(c: Ctx):
    return _ask(c, torch.tensor([5.0, 6.0]))


@case("ask-ids-out-of-vocab")
def _(c: Ctx):
    return _ask(c, torch.tensor([5, 10**6]))


@case("ask-ids-empty")
def _(c: Ctx):
    return _ask(c, torch.tensor([], dtype=torch.long))


@case("ask-ids-2d")
def _(c: Ctx):
    return _ask(c, torch.tensor([[5, 6]]))


@case("ask-ids-type")
def _(c: Ctx):
    return _ask(c, [5, 6])


@case("ask-ids-meta")
def _(c: Ctx):
    return _ask(c, torch.empty(2, dtype=torch.long, device="meta"))


@case("ask-question-empty")
def _(c: Ctx):
    return _ask(c, "  ")


REKV = {"kv_cache": [{"strategy": "rekv", "n_local": 48, "topk": 2}]}


@case("ask-frames-not-integers")
def _(c: Ctx):
    return _ask(c, torch.tensor([5]), stages=REKV, frames=[1.5])


@case("ask-frames-not-a-list")
def _(c: Ctx):
    return _ask(c, torch.tensor([5]), stages=REKV, frames=1)


@case("prefill-ids-empty")
def _(c: Ctx):
    with pipeline_api({}).apply(c.tiny_model()) as bound:
        return c.api(lambda: bound.stream().prefill_ids(torch.tensor([], dtype=torch.long)))


# -------------------------------------------------------------------- frames
def _add(c: Ctx, bad: Any) -> tuple[None, str]:
    with pipeline_api({}).apply(c.tiny_model()) as bound:
        s = bound.stream()
        result = c.api(lambda: s.add_frames(bad))
        assert s._pending == [] and s.chunks_done == 0
    return result


@case("frame-bfloat16")
def _(c: Ctx):
    return _add(c, torch.from_numpy(c.frames[:1] / 255.0).to(torch.bfloat16))


@case("frame-meta-device")
def _(c: Ctx):
    return _add(c, torch.empty(1, 40, 50, 3, dtype=torch.uint8, device="meta"))


@case("frame-complex")
def _(c: Ctx):
    return _add(c, torch.from_numpy(c.frames[:1]).to(torch.complex64))


# -------------------------------------------------------------------- videos
@case("video-display-matrix")
def _(c: Ctx):
    import av

    from tests.support.videos import rotated_mp4

    if not hasattr(av.video.stream.VideoStream, "set_display_rotation"):
        pytest.skip("this PyAV cannot write a display matrix")
    path = rotated_mp4(c.tmp / "tilted.mp4", 45)
    code, out, line = c.tiny_run("--video", str(path))
    assert "summary:" not in out  # refused before any chunk
    return code, line


# ------------------------------------------------------------ strategy contracts
def _contract(c: Ctx, name: str, frames: int = 1) -> tuple[None, str]:
    with contract_pipeline(name, frames).apply(c.tiny_model()) as bound:
        with pytest.raises(PluginFault) as exc:
            bound.stream().add_frames(np.concatenate([c.frames] * 2)[:frames])
    return None, str(exc.value)


@case("plugin-planned-count")
def _(c: Ctx):
    return _contract(c, "overshoot")


@case("plugin-score-shape")
def _(c: Ctx):
    return _contract(c, "short_scores")


@case("plugin-score-type")
def _(c: Ctx):
    return _contract(c, "list_scores")


@case("plugin-budgets-shape")
def _(c: Ctx):
    return _contract(c, "long_budgets")


@case("plugin-plan-type")
def _(c: Ctx):
    return _contract(c, "no_plan")
