"""Every row of docs/errors.md is reproduced here: the documented message and exit code are real.

A row is ``| `id` | trigger | `message` | exit |``; ``…`` in the message stands for a varying
part (a path, a number). Each id has one producer (tests/support/error_cases_*.py) that provokes it and returns
``(exit code, message line)`` (``None`` as exit code for Python API errors); the table test
checks the fragments in order and the code, and a second test fails on undocumented producers
or rows without one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support import (  # noqa: F401 - they register the cases
    error_cases_cli,
    error_cases_dtd,
    error_cases_dycoke_kv,
    error_cases_dycoke_ttm,
    error_cases_evs,
    error_cases_fastv,
    error_cases_infinipot_v,
    error_cases_input,
    error_cases_ipvpos,
    error_cases_models,
    error_cases_outputs,
    error_cases_runs,
    error_cases_streamingtom,
    error_cases_streamingtom_oqm,
    error_cases_trust_eval,
    error_cases_trust_streams,
    error_cases_trust_validate,
    error_cases_trust_venv,
    error_cases_vllm,
)
from tests.support.errors import CASES, TINY, Ctx, Row, table
from tests.support.models import random_frames
from tokencompress.models import loading as models


# ------------------------------------------------------------------ the table
@pytest.fixture
def ctx(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    builtin_model: Any,
    tiny_checkpoint: Path,
) -> Ctx:
    monkeypatch.setattr(models, "build_default_model", lambda *a, **k: builtin_model)
    return Ctx(tmp_path, capsys, random_frames(4), tiny_checkpoint, monkeypatch, TINY)


def test_every_case_has_a_row_and_every_row_a_case() -> None:
    ids = [r.id for r in table()]
    assert len(ids) == len(set(ids)), "duplicate ids in docs/errors.md"
    assert set(ids) == set(CASES), (sorted(set(CASES) - set(ids)), sorted(set(ids) - set(CASES)))


@pytest.mark.parametrize("row", table(), ids=lambda r: r.id)
def test_documented_error(row: Row, ctx: Ctx) -> None:
    code, message = CASES[row.id](ctx)
    assert code == row.exit, (code, message)
    assert "\n" not in message.strip(), message
    at = 0
    for part in row.message.split("…"):
        found = message.find(part, at)
        assert found >= 0, f"{part!r} not in {message!r} (after position {at})"
        at = found + len(part)
