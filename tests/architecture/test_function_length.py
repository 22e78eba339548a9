"""No function or method in the package is longer than 80 lines (``def`` line to last line).

A function that long does several things in a row; split into named steps, each step's docstring
says why it exists and a reader can follow the outer function as a list of those names.
"""

from __future__ import annotations

import ast
from pathlib import Path

import tokencompress

ROOT = Path(tokencompress.__file__).parent
MAX_FUNCTION_LINES = 80

# Known long functions, each to be split by its owner; remove an entry when it is split (the test
# below fails on a stale entry, so the list only shrinks).
ALLOWED: set[str] = set()
"""Known long functions, each to be split by its owner (empty: every function fits)."""


def function_lengths(root: Path = ROOT) -> dict[str, int]:
    """``"tokencompress/<path>::<Class.method or function>"`` → lines (``end_lineno - lineno + 1``),
    for every function and method, nested ones included (named through their parents)."""
    out: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                out[f"{where}::{name}"] = child.end_lineno - child.lineno + 1
                visit(child, f"{name}.", where)
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.", where)
            else:
                visit(child, prefix, where)

    for path in sorted(root.rglob("*.py")):
        where = path.relative_to(root.parent).as_posix()
        visit(ast.parse(path.read_text()), "", where)
    return out


def test_no_function_is_longer_than_80_lines():
    lengths = function_lengths()
    long = {name: n for name, n in lengths.items() if n > MAX_FUNCTION_LINES and name not in ALLOWED}
    assert long == {}, "split into named steps:\n" + "\n".join(
        f"  {k}: {v} lines" for k, v in sorted(long.items())
    )


def test_the_allow_list_names_only_functions_still_too_long():
    lengths = function_lengths()
    stale = sorted(name for name in ALLOWED if lengths.get(name, 0) <= MAX_FUNCTION_LINES)
    assert stale == [], f"no longer over {MAX_FUNCTION_LINES} lines (or gone): remove from ALLOWED: {stale}"


def test_lengths_count_methods_and_nested_functions(tmp_path):
    pkg = tmp_path / "tokencompress"
    pkg.mkdir()
    (pkg / "m.py").write_text(
        "class C:\n    def f(self):\n        def g():\n            pass\n        return 1\n"
    )
    assert function_lengths(pkg) == {"tokencompress/m.py::C.f": 4, "tokencompress/m.py::C.f.g": 2}
