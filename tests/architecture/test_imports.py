"""The package's import graph has no cycles, counting every import (lazy and TYPE_CHECKING too).

A cycle hidden behind a function-level or ``TYPE_CHECKING`` import still couples two modules
both ways: neither can be read, tested or moved alone. Shared vocabulary belongs in
``tokencompress.api.types``, below both sides.
"""

from __future__ import annotations

import ast
from pathlib import Path

import tokencompress

ROOT = Path(tokencompress.__file__).parent
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = path
    return mods


def import_graph(layer_packages: bool = False) -> dict[str, set[str]]:
    """Module → package modules it imports (packages' ``__init__`` re-exports are not edges, unless
    ``layer_packages``: then importing from a layer's own ``__init__``, e.g. ``from ..plugins import
    hookimpl``, is an edge to that package)."""
    mods = _modules()

    def counts(f: str) -> bool:
        return mods[f].name != "__init__.py" or (layer_packages and f.count(".") == 1)

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                found = [target, *(f"{target}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            else:
                continue
            graph[name].update(f for f in found if f in mods and f != name and counts(f))
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_package_has_no_import_cycle():
    assert find_cycles(import_graph()) == []


def test_the_cycle_finder_sees_lazy_and_type_checking_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_import_graph_counts_function_level_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "tokencompress"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "x.py").write_text("def f():\n    from .y import g\n")
    (pkg / "y.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .x import f\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", pkg)
    assert find_cycles(import_graph()) == [["tokencompress.x", "tokencompress.y"]]


def test_no_module_is_over_the_size_limit():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in ROOT.rglob("*.py")}
    assert {p: n for p, n in sizes.items() if n > MAX_LINES} == {}


def test_the_command_line_starts_without_torch():
    """Ctrl-C in a command's first second must land in code that handles it, and --help/--version
    answer at once: importing the CLI (and the package) imports neither torch nor transformers."""
    import subprocess
    import sys

    code = "import sys, tokencompress, tokencompress.cli.main; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
