"""Each layer folder of the package imports only the layers below it.

A plugin author reads ``api`` alone; a strategy is written against ``api`` (and the shared kernels
and plugin helpers), never against a target, and a target never against a strategy, so either can
be replaced without reading the other. The stream sits below the pipeline that drives it, and the
command line sits on top of everything. The graph is the one the cycle test uses
(:func:`import_graph`: every import, lazy and ``TYPE_CHECKING`` ones included), plus imports of a
layer's package ``__init__`` (a re-export still ties the importer to that layer).
"""

from __future__ import annotations

from .test_imports import _modules, import_graph

BASE = {"api"}
# layer -> layers its modules may import (its own is always allowed)
ALLOWED: dict[str, set[str]] = {
    "api": set(),
    "kernels": {"api"},
    "plugins": {"api"},
    "media": {"api"},
    "files": {"api"},
    "strategies": {"api", "kernels", "plugins"},
    "targets": {"api", "kernels", "plugins", "media"},
    "patching": {"api", "kernels", "plugins"},
    "stream": {"api", "media", "plugins", "patching", "files"},
    "pipeline": {
        "api",
        "kernels",
        "plugins",
        "media",
        "files",
        "patching",
        "stream",
        "strategies",
        "targets",
    },
    "models": {"api", "plugins", "files"},
}
_BELOW_TOOLS = set(ALLOWED) | {"pipeline", "models"}
ALLOWED["bench"] = _BELOW_TOOLS | {"eval"}  # bench and eval: anything below them, never the CLI
ALLOWED["eval"] = _BELOW_TOOLS | {"bench"}
ALLOWED["testing"] = set(_BELOW_TOOLS)  # the kit plugin authors test with: never cli, bench or eval
ALLOWED["cli"] = set(ALLOWED) - {"testing"}  # the top: anything but the test kit

# Stated on their own, whatever the table above says.
NEVER = {("strategies", "targets"), ("targets", "strategies")}

EXEMPT = {"tokencompress", "tokencompress.__main__"}  # the package's entry points import every layer


def layer(module: str) -> str | None:
    """The folder right under ``tokencompress`` (``tokencompress.stream.seam`` → ``stream``); None
    for the exempt top-level modules."""
    if module in EXEMPT:
        return None
    return module.split(".")[1]


def layer_edges() -> set[tuple[str, str]]:
    """Every (importer, imported) module pair that crosses from one layer into another."""
    graph = import_graph(layer_packages=True)
    edges = set()
    for a, targets in graph.items():
        for b in targets:
            la, lb = layer(a), layer(b)
            if la is not None and lb is not None and la != lb:
                edges.add((a, b))
    return edges


def violations(edges: set[tuple[str, str]], allowed: dict[str, set[str]]) -> list[str]:
    """``"a -> b"`` for each edge into a layer its importer may not use, or a layer not in the table."""
    bad = []
    for a, b in sorted(edges):
        la, lb = layer(a), layer(b)
        assert la is not None and lb is not None
        if la == lb:
            continue
        if la not in allowed or lb not in allowed[la] or (la, lb) in NEVER:
            bad.append(f"{a} -> {b}  ({la} may not import {lb})")
    return bad


def test_every_layer_is_in_the_table():
    layers = {layer(m) for m in _modules()} - {None}
    assert layers == set(ALLOWED), f"add to ALLOWED: {layers - set(ALLOWED)}; gone: {set(ALLOWED) - layers}"


def test_each_layer_imports_only_the_layers_below_it():
    bad = violations(layer_edges(), ALLOWED)
    assert bad == [], "imports across layers that the layering forbids:\n" + "\n".join(f"  {e}" for e in bad)


def test_strategies_and_targets_never_import_each_other():
    edges = layer_edges()
    bad = [f"{a} -> {b}" for a, b in sorted(edges) if (layer(a), layer(b)) in NEVER]
    assert bad == [], "a strategy and a target know each other only through api:\n" + "\n".join(bad)


def test_the_table_keeps_api_at_the_bottom_and_cli_at_the_top():
    assert ALLOWED["api"] == set()
    assert all("cli" not in allowed for name, allowed in ALLOWED.items())
    assert all(BASE <= allowed for name, allowed in ALLOWED.items() if name != "api")
    assert not any(pair[1] in ALLOWED[pair[0]] for pair in NEVER)


def test_a_forbidden_edge_is_named_with_both_modules():
    edges = {
        ("tokencompress.strategies.x", "tokencompress.targets.y"),
        ("tokencompress.api.a", "tokencompress.api.b"),
    }
    assert violations(edges, ALLOWED) == [
        "tokencompress.strategies.x -> tokencompress.targets.y  (strategies may not import targets)"
    ]
