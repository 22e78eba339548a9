"""Cases of docs/errors.md: pipeline files, command-line values, videos, frames."""

from __future__ import annotations

from typing import Any

import numpy as np

from tests.support.errors import STEP, Ctx, case, pipeline_api
from tests.support.models import random_frames
from tests.support.paths import STC_YAML


# --------------------------------------------------------------- pipeline files
@case("yaml-bool-for-int")
def _(c: Ctx):
    return c.validate(STEP % "tokens_per_frame: true")


@case("yaml-string-for-int")
def _(c: Ctx):
    return c.validate(STEP % "tokens_per_frame: '60'")


@case("yaml-union-path")
def _(c: Ctx):
    return c.validate("stages:\n  pre_vit_block:\n    - {strategy: tome, r: true}\n")


@case("yaml-duplicate-key")
def _(c: Ctx):
    return c.validate("name: a\nstream: {fps: 1}\nstream: {fps: 2}\n")


@case("yaml-duplicate-param")
def _(c: Ctx):
    return c.validate(STEP % "tokens_per_frame: 3, tokens_per_frame: 4")


@case("yaml-too-many-steps")
def _(c: Ctx):
    return c.validate("stages:\n  pre_prefill:\n" + "    - {strategy: stc_pruner}\n" * 65)


@case("yaml-alias-bomb")
def _(c: Ctx):
    lines = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for i in range(1, 6):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return c.validate("\n".join(lines) + "\n")


@case("yaml-file-too-large")
def _(c: Ctx):
    return c.validate("# padding\n" * 120_000)


@case("yaml-fps-inf")
def _(c: Ctx):
    return c.validate("stream: {fps: .inf}\n")


@case("yaml-fps-nan")
def _(c: Ctx):
    return c.validate("stream: {fps: .nan}\n")


@case("yaml-frames-per-chunk-bool")
def _(c: Ctx):
    return c.validate("stream: {frames_per_chunk: true}\n")


@case("stream-prefill-chunks-kv-cache")
def _(c: Ctx):
    text = "stream: {prefill_chunks: 4}\nstages:\n  kv_cache:\n    - {strategy: sliding_window}\n"
    return c.cli("validate", c.write(text))


@case("pipeline-is-directory")
def _(c: Ctx):
    return c.cli("validate", str(c.tmp), "--no-model")


@case("pipeline-not-text")
def _(c: Ctx):
    path = c.tmp / "p.yaml"
    path.write_bytes(b"\xff\xfe\x00binary")
    return c.cli("validate", str(path), "--no-model")


# ---------------------------------------------------------------- CLI numbers
def _run(c: Ctx, *extra: str) -> tuple[int, str]:
    return c.cli("run", STC_YAML, "--no-progress", *extra)


@case("cli-fps-nan")
def _(c: Ctx):
    return _run(c, "--fps", "nan")


@case("cli-fps-inf")
def _(c: Ctx):
    return _run(c, "--fps", "inf")


@case("cli-fps-zero")
def _(c: Ctx):
    return _run(c, "--fps", "0")


@case("cli-max-new-tokens")
def _(c: Ctx):
    return _run(c, "--max-new-tokens", "-1")


@case("cli-max-frames")
def _(c: Ctx):
    return _run(c, "--max-frames", "0")


@case("cli-ask-empty")
def _(c: Ctx):
    return _run(c, "--ask", " ")


@case("cli-json-empty")
def _(c: Ctx):
    return _run(c, "--json", "")


@case("cli-prefill-chunks")
def _(c: Ctx):
    return _run(c, "--prefill-chunks", "0")


@case("bench-frames")
def _(c: Ctx):
    return c.cli("bench", STC_YAML, "--max-frames", "0", "--no-progress")


@case("bench-repeats")
def _(c: Ctx):
    return c.cli("bench", STC_YAML, "--repeats", "0", "--no-progress")


# ------------------------------------------------------------------- videos
@case("video-directory")
def _(c: Ctx):
    return _run(c, "--video", str(c.tmp))


@case("video-image")
def _(c: Ctx):
    from PIL import Image

    path = c.tmp / "still.png"
    Image.fromarray(random_frames(1)[0]).save(path)
    return _run(c, "--video", str(path))


@case("video-text")
def _(c: Ctx):
    return _run(c, "--video", c.write("not a video\n" * 50, "notes.txt"))


# ------------------------------------------------------------------- frames
def _add_frames(c: Ctx, bad: Any) -> tuple[None, str]:
    with pipeline_api({}).apply(c.tiny_model()) as bound:
        s = bound.stream()
        result = c.api(lambda: s.add_frames(bad))
        assert s._pending == [] and s.chunks_done == 0  # refused before it was queued
        assert len(s.add_frames(c.frames[:1])) == 1  # and the stream still works
    return result


@case("frame-zero-height")
def _(c: Ctx):
    return _add_frames(c, np.zeros((1, 0, 40, 3), np.uint8))


@case("frame-float-0-1")
def _(c: Ctx):
    return _add_frames(c, c.frames[:1] / 255.0)


@case("frame-float-0-255")
def _(c: Ctx):
    return _add_frames(c, c.frames[:1].astype(np.float32))


@case("frame-channels")
def _(c: Ctx):
    return _add_frames(c, [c.frames[0], c.frames[1][..., :2]])
