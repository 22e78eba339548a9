"""VideoMME, EgoSchema, MLVU and ReKV-format JSON on their synthetic sets."""

from __future__ import annotations

import pytest

from tokencompress.api.errors import TokenCompressError

from .helpers import run_scripted


def total(bench, m, tmp_path, scoring="official", data=None):
    res, engines, loaded = run_scripted(
        bench, data or m["root"], tmp_path / scoring, m["responses"], fps=0.5, scoring=scoring
    )
    return res["variants"][0]["scores"], engines[0], loaded


def test_videomme_micro(synth, tmp_path):
    s, eng, loaded = total("videomme", synth["videomme"], tmp_path)
    assert round(s["total"], 2) == 66.67
    assert set(s["categories"]) == {"short", "medium", "long"}
    assert {c.qid: c.frames for c in eng.calls} == {
        "001-1": 5,
        "002-1": 2,
        "003-1": 3,
    }  # whole video at 0.5 fps
    assert loaded.queries[0].prompt.split("\n")[1:5] == [
        "Which option fits clip 0?",
        "A. one",
        "B. two",
        "C. three",
    ]


def test_egoschema_fraction(synth, tmp_path):
    s, _, _ = total("egoschema", synth["egoschema"], tmp_path)
    assert s["total"] == 1.0  # a fraction, not a percentage (quirk 18)


def test_mlvu_macro_and_micro(synth, tmp_path):
    m = synth["mlvu"]
    s, _, loaded = total("mlvu", m, tmp_path)
    assert round(s["total"], 2) == 21.43 and "7 MLVU task types" in s["total_formula"]
    assert loaded.queries[0].prompt.endswith("Best option: (")
    s, _, _ = total("mlvu", m, tmp_path, scoring="stc")
    assert s["total"] == 75.0 and "micro" in s["total_formula"]


def test_rekv_json(synth, tmp_path):
    m = synth["rekv"]
    s, eng, loaded = total("mlvu", m, tmp_path, scoring="stc", data=m["annotation"])
    assert s["total"] == 100.0
    assert [q.gt for q in loaded.queries] == ["B", "C"]  # text answer and letter answer
    assert loaded.queries[0].answer_prefix == "Best option: ("
    assert "\n(A) a bus\n(B) bikes\n" in loaded.queries[0].prompt
    assert "(C) C. three" in loaded.queries[1].prompt  # VideoMME choices keep their own prefix


def test_missing_layout(tmp_path):
    from pathlib import Path

    from tokencompress.eval.loaders import load_benchmark
    from tokencompress.eval.loading import LoadOptions

    for bench, name in (
        ("videomme", "videomme/videomme.json"),
        ("egoschema", "egoschema/subset.json"),
        ("mlvu", "mlvu/dev.json"),
    ):
        with pytest.raises(TokenCompressError, match=f"missing {name}"):
            load_benchmark(bench, Path(tmp_path), LoadOptions())
