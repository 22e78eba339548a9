"""Cases of docs/errors.md: `eval` flags, outputs and untrusted annotations."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.errors import Ctx, case
from tests.support.paths import STC_YAML


def _ovo(c: Ctx, records: str | None = None) -> str:
    """The synthetic OVO set (no chunk files) or an empty layout holding ``records`` as its JSON."""
    root = c.tmp / "ovo"
    if records is None:
        from tokencompress.eval.synthetic import build

        build("ovo-bench", root, chunks=False)
    else:
        (root / "data" / "src_videos").mkdir(parents=True)
        (root / "data" / "ovo_bench_new.json").write_text(records)
    return str(root)


def _eval(c: Ctx, data: str, *extra: str) -> tuple[int, str]:
    return c.cli("eval", STC_YAML, "--benchmark", "ovo-bench", "--data", data, "--no-progress", *extra)


def _edit_first(data: str, key: str, raw: str) -> None:
    path = Path(data) / "data" / "ovo_bench_new.json"
    records = json.loads(path.read_text())
    records[0][key] = "@@"
    path.write_text(json.dumps(records).replace('"@@"', raw))


@case("eval-fps-range")
def _(c: Ctx):
    return _eval(c, _ovo(c, "[]"), "--fps", "5000", "--frame-rule", "time_slots")


@case("eval-num-frames-range")
def _(c: Ctx):
    return _eval(c, _ovo(c, "[]"), "--num-frames", "0", "--frame-rule", "uniform_k")


@case("eval-out-is-file")
def _(c: Ctx):
    (c.tmp / "eval_out").write_text("a file")
    return _eval(c, _ovo(c, "[]"), "--out", str(c.tmp / "eval_out"))


@case("eval-annotation-too-deep")
def _(c: Ctx):
    return _eval(c, _ovo(c, "[" * 500 + "]" * 500), "--out", str(c.tmp / "o"))


@case("eval-annotation-not-utf8")
def _(c: Ctx):
    data = _ovo(c, "[]")
    (Path(data) / "data" / "ovo_bench_new.json").write_bytes(b'[{"question": "\xff"}]')
    return _eval(c, data, "--out", str(c.tmp / "o"))


@case("eval-prompts-too-deep")
def _(c: Ctx):
    deep = c.write("ovo-bench: " + "[" * 500 + "]" * 500 + "\n", "prompts.yaml")
    return _eval(c, _ovo(c, "[]"), "--prompts", deep, "--out", str(c.tmp / "o"))


@case("eval-prompts-not-utf8")
def _(c: Ctx):
    bad = c.tmp / "prompts.yaml"
    bad.write_bytes(b"ovo-bench:\n  mc: '\xff'\n")
    return _eval(c, _ovo(c, "[]"), "--prompts", str(bad), "--out", str(c.tmp / "o"))


@case("eval-strict-video-outside")
def _(c: Ctx):
    data = _ovo(c)
    _edit_first(data, "video", '"../../../secret/rel.mp4"')
    return _eval(c, data, "--strict", "--out", str(c.tmp / "o"))


@case("eval-strict-bad-time")
def _(c: Ctx):
    data = _ovo(c)
    _edit_first(data, "realtime", "NaN")
    return _eval(c, data, "--strict", "--out", str(c.tmp / "o"))


@case("eval-strict-too-many-options")
def _(c: Ctx):
    data = _ovo(c)
    _edit_first(data, "options", json.dumps([f"o{i}" for i in range(11)]))
    return _eval(c, data, "--strict", "--out", str(c.tmp / "o"))
