"""The README is the front door: every hook a plugin can implement is documented there."""

from __future__ import annotations

import inspect
from pathlib import Path

from tokencompress.hooks import hookspecs

README = (Path(__file__).parent.parent / "README.md").read_text()
PLUGIN_README = (Path(__file__).parent.parent / "plugins" / "tokencompress-uniform" / "README.md").read_text()


def test_every_hookspec_is_documented() -> None:
    specs = [
        name
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if name.startswith("tokencompress_")
    ]
    assert len(specs) == 4
    missing = [name for name in specs if name not in README]
    assert not missing, f"hooks missing from README.md: {missing}"
    for name in specs:
        assert inspect.getdoc(getattr(hookspecs, name)), f"{name} has no docstring"


def test_readme_names_every_ready_pipeline() -> None:
    files = sorted(p.name for p in (Path(__file__).parent.parent / "pipelines").glob("*.yaml"))
    missing = [f for f in files if f not in README]
    assert not missing, f"pipelines missing from README.md: {missing}"


def test_plugin_readme_shows_the_entry_point_group() -> None:
    assert "[project.entry-points.tokencompress]" in PLUGIN_README
