"""Data-driven discovery of reference fixture cases.

A case is a ``<stem>.json`` sidecar (plus ``<stem>.safetensors``) in ``tests/fixtures/<method>/``
or, when ``TOKENCOMPRESS_EXTRA_FIXTURES`` is set, in ``$TOKENCOMPRESS_EXTRA_FIXTURES/<method>/``.
Companion files (models, frames, plain outputs) are the stems some sidecar names in a
``*_file`` field; stems starting with ``_`` are indexes. Nothing about a case is hard-coded:
parameters come from its sidecar.

Also shared by the method tests: ``need`` reads a sidecar field, ``run_case`` hands a case to the
check for its kind, ``parse_tolerance`` reads the tolerance strings the sidecars and READMEs use, and
``Checker`` compares results with a case's expected tensors.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor

from tests.support.paths import FIXTURES


@dataclass(frozen=True)
class Case:
    path: Path  # the .json sidecar
    meta: dict

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def kind(self) -> str | None:
        return self.meta.get("kind")

    def tensors(self, stem: str | None = None) -> dict[str, torch.Tensor]:
        return load_file(str(self.path.with_name(f"{stem or self.name}.safetensors")))

    def companion(self, field: str) -> tuple[dict, dict[str, torch.Tensor]]:
        """The sidecar and tensors of the companion this case names in ``field``."""
        stem = self.meta[field]
        meta = (
            json.loads(self.path.with_name(f"{stem}.json").read_text())
            if self.path.with_name(f"{stem}.json").exists()
            else {}
        )
        return meta, self.tensors(stem)

    def tolerance(self, *keys: str, section: str = "tolerances") -> dict[str, float]:
        """``parse_tolerance`` of the first of ``keys`` the sidecar's ``section`` has; fails the test
        (naming the case) when none is there or the string cannot be read."""
        table = self.meta.get(section, {})
        for key in keys:
            if key in table:
                try:
                    return parse_tolerance(table[key])
                except ValueError as exc:
                    pytest.fail(f"{self.name}: tolerance {section}.{key}: {exc}")
        pytest.fail(f"{self.name}: sidecar {section!r} has none of the tolerances {keys}")


def fixture_dirs(method: str) -> list[Path]:
    dirs = [FIXTURES / method]
    extra = os.environ.get("TOKENCOMPRESS_EXTRA_FIXTURES")
    if extra:
        dirs.append(Path(extra) / method)
    return [d for d in dirs if d.is_dir()]


def collect(method: str) -> list[Case]:
    cases: list[Case] = []
    for d in fixture_dirs(method):
        sidecars = {p: json.loads(p.read_text()) for p in sorted(d.glob("*.json"))}
        companions = {
            str(v)
            for meta in sidecars.values()
            for k, v in meta.items()
            if k.endswith("_file") and isinstance(v, str)
        }
        for p, meta in sidecars.items():
            if p.stem.startswith("_") or p.stem in companions:
                continue
            cases.append(Case(p, meta))
    return cases


def params(method: str, kinds: set[str | None] | None = None) -> list:
    """pytest params (id = case stem) of ``method``'s cases, optionally only some kinds."""
    out = [pytest.param(c, id=c.name) for c in collect(method) if kinds is None or c.kind in kinds]
    return out or [pytest.param(None, id="no-cases", marks=pytest.mark.skip(reason=f"no {method} cases"))]


def need(meta: dict, *keys: str, where: str | None = None) -> Any:
    """``meta[keys[0]][keys[1]]...``; fails the test (prefixed by ``where``) if the sidecar lacks it."""
    value = meta
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            pytest.fail(f"{where + ': ' if where else ''}sidecar lacks {'.'.join(keys)!r}")
        value = value[key]
    return value


def run_case(
    case: Case, label: str | None, checks: Mapping[str, Callable[[Case], dict[str, float]]], what: str
) -> None:
    """Run the check registered for ``label`` (failing on an unknown one) and print its max errors."""
    check = checks.get(label)  # type: ignore[arg-type]
    if check is None:
        pytest.fail(f"{case.name}: unknown {what} {label!r}; known: {sorted(checks)}")
    errors = check(case)
    worst = max(errors.values(), default=0.0)
    print(f"{case.name} [{label}]: max abs error {worst:.3g} {errors}")


# ------------------------------------------------------------------------------------------ tolerances

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?"
_EXACT = re.compile(r"(?:bit-?)?exact(?:ly)?(?: as sets)?|bit[- ]for[- ]bit")
_BOUND = re.compile(rf"(atol|rtol|atol/rtol|rtol/atol)\s*=?\s*({_NUMBER})")
_COMMENT = re.compile(r"\s*\([^()]*\)$")
_EXACT_LEAD = re.compile(r"(?:bit-?)?exact(?:ly)?(?:\s*\([^()]*\))?(?:;|\s+or\s|,\s+(?:unless|except)\s)")
_DOC_KEYS = frozenset({"note", "why"})
"""Keys of a tolerance mapping that explain it (strings), not bounds."""


def parse_tolerance(spec: str | Mapping[str, object]) -> dict[str, float]:
    """``{"atol": a, "rtol": r}`` from a tolerance as the fixture sidecars and READMEs write it.

    Strings: ``"atol 1e-5"``, ``"rtol 1e-5, atol 1e-6"``, ``"rtol = 1e-5, atol = 1e-5"`` (backticks
    allowed), ``"atol/rtol 1e-4"`` (both), each optionally followed by one ``"(comment)"``; a bound not
    named is 0. ``"exact"``, ``"exactly"``, ``"exact as sets"``, ``"bit-exact"`` and ``"bit for bit"``
    (also with a comment, or followed by ``"; ..."`` or ``" or <rule for other keys>"``, as the rekv
    sidecars write their exact checks) give both bounds 0: compare with ``is_exact``/``torch.equal``, and check
    set semantics where the caller needs them. Mappings: ``{"atol": 1e-5, "rtol": 1e-5}``, optionally with ``"note"`` or
    ``"why"`` strings (documentation). ``"exact, unless <rule>"`` and ``"exact, except <rule>"`` are exact:
    the rule (a tie alternative) is the caller's to apply.
    Anything else raises ``ValueError``; nothing is defaulted.
    """
    if isinstance(spec, Mapping):
        unknown = set(spec) - {"atol", "rtol"} - _DOC_KEYS
        docs_ok = all(isinstance(spec[key], str) for key in _DOC_KEYS & set(spec))
        if unknown or not set(spec) & {"atol", "rtol"} or not docs_ok:
            raise ValueError(
                f"tolerance mapping {dict(spec)!r} must have only 'atol' and/or 'rtol' (and 'note'/'why' strings)"
            )
        bounds = {key: _bound(key, value) for key, value in spec.items() if key not in _DOC_KEYS}
        return {"atol": bounds.get("atol", 0.0), "rtol": bounds.get("rtol", 0.0)}
    if not isinstance(spec, str):
        raise ValueError(f"unreadable tolerance {spec!r}: not a string or mapping")
    text = _COMMENT.sub("", spec.replace("`", "").strip().lower()).strip()
    if _EXACT.fullmatch(text) or _EXACT_LEAD.match(text):
        return {"atol": 0.0, "rtol": 0.0}
    found: dict[str, float] = {}
    for part in text.split(","):
        match = _BOUND.fullmatch(part.strip())
        if match is None:
            raise ValueError(f"unreadable tolerance {spec!r}")
        for key in match.group(1).split("/"):
            if key in found:
                raise ValueError(f"tolerance {spec!r} gives {key} twice")
            found[key] = _bound(key, match.group(2))
    return {"atol": found.get("atol", 0.0), "rtol": found.get("rtol", 0.0)}


def _bound(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"tolerance {key} = {value!r} is not a number")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"tolerance {key} = {value!r} is not a finite non-negative number")
    return number


def is_exact(tol: Mapping[str, float]) -> bool:
    """Whether a parsed tolerance allows no difference at all."""
    return tol["atol"] == 0.0 and tol["rtol"] == 0.0


# -------------------------------------------------------------------------------------------- checker


class Checker:
    """Compares results with a case's expected tensors and insists every expected key is checked.

    ``close`` (within ``tol``, or a per-call override) and ``exact`` record a key as checked, ``used``
    marks keys a test consumed or checked another way, and ``done`` fails if any is left, returning
    the max abs error of every ``close``.
    """

    def __init__(self, case: Case, expected: dict[str, Tensor], tol: dict[str, float]) -> None:
        self.case, self.expected, self.tol = case, expected, tol
        self.checked: set[str] = set()
        self.errors: dict[str, float] = {}

    def close(self, key: str, got: Tensor, **tol: float) -> None:
        want = self.expected[key]
        assert got.shape == want.shape, (self.case.name, key, tuple(got.shape), tuple(want.shape))
        torch.testing.assert_close(
            got.float(), want.float(), **(tol or self.tol), msg=lambda m: f"{self.case.name}: {key}: {m}"
        )
        self.errors[key] = (got.float() - want.float()).abs().max().item() if want.numel() else 0.0
        self.checked.add(key)

    def exact(self, key: str, got: Tensor) -> None:
        want = self.expected[key]
        assert got.shape == want.shape, (self.case.name, key, tuple(got.shape), tuple(want.shape))
        assert torch.equal(got.to(want.dtype), want), f"{self.case.name}: {key} differs:\n{got}\n{want}"
        self.checked.add(key)

    def used(self, *keys: str) -> None:
        self.checked.update(keys)

    def done(self) -> dict[str, float]:
        left = set(self.expected) - self.checked
        assert not left, f"{self.case.name}: expected tensors not checked: {sorted(left)}"
        return self.errors
