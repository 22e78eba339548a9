"""The public API is one list: ``tokencompress._EXPORTS`` (name → module), and everything follows it."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import tokencompress


def _static_imports() -> dict[str, str]:
    """Name → module of the ``if TYPE_CHECKING:`` imports in ``tokencompress/__init__.py``."""
    tree = ast.parse(Path(tokencompress.__file__).read_text())
    block = next(
        n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING"
    )
    return {
        a.asname or a.name: "." + n.module
        for n in block.body
        if isinstance(n, ast.ImportFrom)
        for a in n.names
    }


def test_all_is_the_export_list() -> None:
    assert tokencompress.__all__ == sorted(tokencompress._EXPORTS)


def test_static_imports_name_the_same_things_from_the_same_modules() -> None:
    assert _static_imports() == tokencompress._EXPORTS


def test_every_export_resolves_to_the_object_its_module_defines() -> None:
    for name, module in tokencompress._EXPORTS.items():
        assert getattr(tokencompress, name) is getattr(importlib.import_module(module, "tokencompress"), name)


def test_the_kv_cache_bases_and_plugin_helpers_are_public() -> None:
    for name in (
        "KVCacheStrategy",
        "KVMemory",
        "KVBuild",
        "DecoderLayout",
        "Registrar",
        "LayerProbe",
        "load_plugin_file",
    ):
        assert name in tokencompress.__all__
