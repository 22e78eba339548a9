"""Where the repository's files lie, computed once: test files sit at different depths under tests/,
so none of them derives the root from its own ``__file__``."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
"""The repository root (holds pyproject.toml, pipelines/, docs/, plugins/)."""
TESTS = ROOT / "tests"
FIXTURES = TESTS / "fixtures"
"""Reference fixtures: ``fixtures/<method>/<case>.json`` (+ tensors), see fixtures/README.md."""
PIPELINES = ROOT / "pipelines"
DOCS = ROOT / "docs"
STC_YAML = str(PIPELINES / "stc.yaml")
"""The ready-made STC pipeline file, as the command line takes it (a string path)."""
