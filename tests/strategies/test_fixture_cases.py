"""The shared fixture helpers: sidecar fields, dispatch, tolerance strings and the expected-tensor checker."""

from __future__ import annotations

import json

import pytest
import torch

from tests.support.fixture_cases import FIXTURES, Case, Checker, is_exact, need, parse_tolerance, run_case


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ("atol 1e-5", {"atol": 1e-5, "rtol": 0.0}),
        ("atol 1e-5 (attention kernels may differ in the last bits)", {"atol": 1e-5, "rtol": 0.0}),
        ("rtol 1e-5, atol 1e-6", {"atol": 1e-6, "rtol": 1e-5}),
        ("atol 1e-5, rtol 1e-5", {"atol": 1e-5, "rtol": 1e-5}),
        ("`rtol = 1e-5`, `atol = 1e-5`", {"atol": 1e-5, "rtol": 1e-5}),
        ("atol/rtol 1e-4", {"atol": 1e-4, "rtol": 1e-4}),
        ("ATOL 2E-3", {"atol": 2e-3, "rtol": 0.0}),
        ({"rtol": 1e-05, "atol": 1e-05}, {"atol": 1e-5, "rtol": 1e-5}),
        ({"atol": 0.0001}, {"atol": 1e-4, "rtol": 0.0}),
        ({"atol": 1e-4, "rtol": 1e-5, "why": "sdpa vs explicit softmax"}, {"atol": 1e-4, "rtol": 1e-5}),
    ],
)
def test_bounds_are_read(spec, want) -> None:
    assert parse_tolerance(spec) == want
    assert not is_exact(parse_tolerance(spec))


@pytest.mark.parametrize(
    "spec",
    [
        "exact",
        "exactly",
        "exact as sets",
        "exact (rows are copied)",
        "exactly (present only when a merge happened)",
        "bit-exact",
        "bit-exact (pure gather)",
        "bit for bit",
        "exact; when two lists are acceptable either is correct",
        "exact (pure copies of inputs) or atol 1e-6 for block_repr",
        "exact, except steps[].boundary_tie: any choice among the tied positions",
    ],
)
def test_exact_forms_allow_nothing(spec: str) -> None:
    assert parse_tolerance(spec) == {"atol": 0.0, "rtol": 0.0}
    assert is_exact(parse_tolerance(spec))


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "1e-5",
        "scores 1e-5",
        "atol",
        "atol 1e-5 rtol 1e-5",
        "atol 1e-5, atol 1e-6",
        "atol/rtol 1e-4, rtol 1e-5",
        "atol -1e-5",
        "atol 1e-5; rtol 1e-5",
        "approximately",
        "exact-ish",
        "inexact",
        None,
        1e-5,
        {},
        {"atol": 1e-5, "float_tensors": "exact"},
        {"atol": "exact"},
        {"atol": True},
        {"atol": float("nan")},
        {"atol": 1e-5, "why": 3},
        {"rtol": -1.0},
    ],
)
def test_unreadable_tolerances_raise(spec) -> None:
    with pytest.raises(ValueError):
        parse_tolerance(spec)


def _sidecar_tolerances() -> list:
    found = []
    for path in sorted(FIXTURES.glob("*/*.json")):
        meta = json.loads(path.read_text())
        for section in ("tolerances", "tolerance"):
            for key, spec in meta.get(section, {}).items():
                if key == "note" or (isinstance(spec, str) and spec.startswith("not compared")):
                    continue  # documentation of the case, not a bound
                if isinstance(spec, (str, dict)):
                    found.append(pytest.param(spec, id=f"{path.parent.name}/{path.stem}:{section}.{key}"))
    return found


@pytest.mark.parametrize("spec", _sidecar_tolerances())
def test_every_sidecar_tolerance_string_is_readable(spec) -> None:
    tol = parse_tolerance(spec)
    assert set(tol) == {"atol", "rtol"}


def test_case_tolerance_takes_the_first_key_present_and_fails_on_the_rest(tmp_path) -> None:
    case = Case(tmp_path / "c.json", {"tolerances": {"b": "atol 1e-3", "bad": "roughly"}})
    assert case.tolerance("a", "b") == {"atol": 1e-3, "rtol": 0.0}
    with pytest.raises(pytest.fail.Exception, match="has none of the tolerances"):
        case.tolerance("a")
    with pytest.raises(pytest.fail.Exception, match=r"c: tolerance tolerances\.bad"):
        case.tolerance("bad")


def test_checker_compares_and_insists_every_key_is_checked(tmp_path) -> None:
    case = Case(tmp_path / "c.json", {})
    expected = {"x": torch.tensor([1.0, 2.0]), "i": torch.tensor([3, 4]), "in": torch.zeros(1)}
    check = Checker(case, expected, {"atol": 1e-3, "rtol": 0.0})
    check.close("x", torch.tensor([1.0005, 2.0]))
    with pytest.raises(AssertionError):
        check.close("x", torch.tensor([1.01, 2.0]))
    with pytest.raises(AssertionError):
        check.close("x", torch.tensor([1.01, 2.0]), atol=1e-3, rtol=0.0)
    check.close("x", torch.tensor([1.01, 2.0]), atol=0.1, rtol=0.0)
    with pytest.raises(AssertionError):
        check.close("x", torch.tensor([[1.0, 2.0]]))  # shape
    check.exact("i", torch.tensor([3.0, 4.0]))
    with pytest.raises(AssertionError):
        check.exact("i", torch.tensor([3, 5]))
    with pytest.raises(AssertionError, match=r"not checked: \['in'\]"):
        check.done()
    check.used("in")
    errors = check.done()
    assert set(errors) == {"x"} and errors["x"] == pytest.approx(0.01, abs=1e-6)


def test_need_reads_nested_fields_and_names_what_is_missing() -> None:
    meta = {"a": {"b": 3}, "c": 1}
    assert need(meta, "a", "b") == 3 and need(meta, "c") == 1
    with pytest.raises(pytest.fail.Exception, match=r"^sidecar lacks 'a\.x'"):
        need(meta, "a", "x")
    with pytest.raises(pytest.fail.Exception, match=r"^case7: sidecar lacks 'c\.d'"):
        need(meta, "c", "d", where="case7")


def test_run_case_dispatches_and_refuses_unknown_labels(tmp_path) -> None:
    case = Case(tmp_path / "c.json", {})
    seen = []
    checks = {"k": lambda c: seen.append(c) or {"x": 0.5}}
    run_case(case, "k", checks, "test kind")
    assert seen == [case]
    with pytest.raises(pytest.fail.Exception, match=r"c: unknown test kind 'q'; known: \['k'\]"):
        run_case(case, "q", checks, "test kind")
    with pytest.raises(pytest.fail.Exception, match="unknown test kind None"):
        run_case(case, None, checks, "test kind")
