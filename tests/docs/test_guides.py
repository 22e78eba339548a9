"""The plugin authors' guides run as written, and every public hook and base-class method is in them."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest

from tests.support.paths import DOCS
from tokencompress import (
    BlockAdapter,
    BlockStrategy,
    ScoringPruner,
    Strategy,
    Target,
    TokenStrategy,
    VisualTokens,
)
from tokencompress.plugins import hookspecs

GUIDES = {"strategy": DOCS / "writing-a-strategy.md", "target": DOCS / "writing-a-target.md"}


def code_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def public_names(cls: type) -> set[str]:
    """Public methods and properties a subclass author meets, defined on ``cls`` itself."""
    names = {
        n for n, v in vars(cls).items() if not n.startswith("_") and (callable(v) or isinstance(v, property))
    }
    names |= {
        n for n, v in vars(cls).items() if isinstance(v, classmethod | staticmethod) and not n.startswith("_")
    }
    return names - {"Params", "Options"}


@pytest.mark.parametrize("guide", sorted(GUIDES))
def test_guide_code_runs(guide: str) -> None:
    blocks = code_blocks(GUIDES[guide])
    assert len(blocks) >= 2
    namespace: dict = {"__name__": f"guide_{guide}"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{GUIDES[guide].name}[block {i}]", "exec"), namespace)  # noqa: S102


@pytest.mark.parametrize(
    ("guide", "classes"),
    [
        ("strategy", (Strategy, TokenStrategy, BlockStrategy, ScoringPruner, VisualTokens)),
        ("target", (Target, BlockAdapter)),
    ],
)
def test_every_public_method_is_in_its_guide(guide: str, classes: tuple[type, ...]) -> None:
    text = GUIDES[guide].read_text()
    missing = sorted(
        f"{cls.__name__}.{name}" for cls in classes for name in public_names(cls) if f"`{name}" not in text
    )
    assert missing == [], f"undocumented in {GUIDES[guide].name}: {missing}"


def test_every_carrier_field_is_in_the_strategy_guide() -> None:
    text = GUIDES["strategy"].read_text()
    fields = [f.name for f in dataclasses.fields(VisualTokens)]
    assert [f for f in fields if f"`{f}`" not in text] == []


def test_every_hook_is_in_a_guide() -> None:
    text = "".join(p.read_text() for p in GUIDES.values())
    specs = [
        n for n, _ in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("tokencompress_")
    ]
    assert [s for s in specs if s not in text] == []


def test_the_method_check_sees_a_new_method() -> None:
    """Not true by construction: a method added to a base class would be reported."""

    class Grown(Target):
        def brand_new_public_method(self) -> None: ...

    assert "brand_new_public_method" in public_names(Grown)


# ------------------------------------------------------------- what the guides import
IMPORT = re.compile(r"from (tokencompress[\w.]*) import \(?\s*(\w+(?:\s*,\s*\w+)*)")


def test_every_name_a_guide_imports_exists() -> None:
    """Code blocks and inline code alike: a name shown as importable must be importable."""
    import importlib

    text = "".join(p.read_text() for p in GUIDES.values())
    seen = 0
    for module, names in IMPORT.findall(text):
        for name in (n.strip() for n in names.split(",")):
            seen += 1
            assert hasattr(importlib.import_module(module), name), f"from {module} import {name}"
    assert seen >= 10


def test_load_plugin_file_is_importable_from_the_top_level() -> None:
    import tokencompress
    from tokencompress.plugins.local_files import load_plugin_file

    assert "load_plugin_file" in tokencompress.__all__
    assert tokencompress.load_plugin_file is load_plugin_file
    assert "from tokencompress import Registry,\nload_plugin_file" in GUIDES["strategy"].read_text()


def test_the_testing_kit_is_in_the_guides() -> None:
    """Every name of ``tokencompress.testing`` is in a guide; its checks run in an executed block."""
    import tokencompress.testing as kit

    text = "".join(p.read_text() for p in GUIDES.values())
    code = "".join(b for p in GUIDES.values() for b in code_blocks(p))
    assert [n for n in kit.__all__ if f"`{n}" not in text and n not in code] == []
    checks = [n for n in kit.__all__ if n.startswith(("check_", "parametrize_"))]
    assert [n for n in checks if f"{n}(" not in code] == []


def test_the_strategy_guide_gives_conformance_params_a_signature_and_an_example() -> None:
    text = GUIDES["strategy"].read_text()
    assert "`conformance_params(info: StageInfo) ->" in " ".join(text.split())
    assert any("def conformance_params(cls, info)" in b for b in code_blocks(GUIDES["strategy"]))
