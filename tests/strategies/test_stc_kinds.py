"""STC cases are split by kind between the Pruner and Cacher tests; a case of any other kind
(e.g. a new format in ``TOKENCOMPRESS_EXTRA_FIXTURES``) must fail here rather than go unchecked."""

from __future__ import annotations

import pytest

from tests.support.fixture_cases import Case, params

HANDLED = {"stc_pruner": "test_stc_pruner.py", "stc_cacher": "test_stc_cacher.py"}


@pytest.mark.parametrize("case", params("stc"))
def test_stc_case_kind_is_handled(case: Case) -> None:
    if case.kind not in HANDLED:
        pytest.fail(f"{case.path}: unknown STC fixture kind {case.kind!r}; handled: {sorted(HANDLED)}")
