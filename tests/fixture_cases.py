"""Data-driven discovery of reference fixture cases.

A case is a ``<stem>.json`` sidecar (plus ``<stem>.safetensors``) in ``tests/fixtures/<method>/``
or, when ``TOKENCOMPRESS_EXTRA_FIXTURES`` is set, in ``$TOKENCOMPRESS_EXTRA_FIXTURES/<method>/``.
Companion files (models, frames, plain outputs) are the stems some sidecar names in a
``*_file`` field; stems starting with ``_`` are indexes. Nothing about a case is hard-coded:
parameters come from its sidecar.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

FIXTURES = Path(__file__).parent / "fixtures"


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
