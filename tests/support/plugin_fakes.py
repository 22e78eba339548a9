"""In-memory stand-ins for installed plugins: a module-like plugin object, fake entry points, a test pruner.

Tests build registries from these (``Registry(plugins=[...])``) so they never depend on what
else happens to be installed.
"""

from __future__ import annotations

import importlib.metadata as md
import textwrap
import types
from collections.abc import Callable, Iterable
from typing import Any

import pytest
import torch

from tokencompress import (
    Capability,
    ChunkInfo,
    PerFrameParams,
    ScoringPruner,
    Stage,
    TokenStrategy,
    VisualTokens,
    hookimpl,
)
from tokencompress.plugins import registry as registry_module


def _installed(dist: str) -> bool:
    try:
        md.distribution(dist)
    except md.PackageNotFoundError:
        return False
    return True


needs_uniform = pytest.mark.skipif(
    not _installed("tokencompress-uniform"),
    reason="pip install -e plugins/tokencompress-uniform (CI installs it)",
)


class KeepFirstParams(PerFrameParams):
    tokens_per_frame: int = 4


class KeepFirst(ScoringPruner):
    """Test pruner: keeps each frame's first tokens."""

    name = "keep_first"
    stage = Stage.PRE_PREFILL
    Params = KeepFirstParams

    def score(self, tokens: VisualTokens, state: Any, chunk: ChunkInfo) -> torch.Tensor:
        return -tokens.local_index().double()


def strategy_named(name: str, base: type = KeepFirst) -> type:
    return type(f"Strategy_{name}", (base,), {"name": name})


def plugin(
    package: str, strategies: Iterable[type] = (), targets: Iterable[type] = (), **hooks: Callable
) -> Any:
    """A module-like plugin object, as an installed package's entry-point module would be."""
    ns = types.SimpleNamespace(__tokencompress_package__=package, __name__=f"{package}_module")
    strategies, targets = list(strategies), list(targets)
    if strategies:

        @hookimpl
        def tokencompress_register_strategies(registrar):
            for cls in strategies:
                registrar.add_strategy(cls)

        ns.tokencompress_register_strategies = tokencompress_register_strategies
    if targets:

        @hookimpl
        def tokencompress_register_targets(registrar):
            for cls in targets:
                registrar.add_target(cls)

        ns.tokencompress_register_targets = tokencompress_register_targets
    for name, fn in hooks.items():
        setattr(ns, name, hookimpl(fn))
    return ns


class FakeEntryPoint:
    """Quacks like ``importlib.metadata.EntryPoint`` for the registry: name, value, dist, load()."""

    def __init__(self, name: str, package: str, load: Callable[[], Any], value: str | None = None) -> None:
        self.name = name
        self.value = value or f"{package.replace('-', '_')}_plugin"
        self.group = "tokencompress"
        self.dist = types.SimpleNamespace(name=package)
        self._load = load

    def load(self) -> Any:
        return self._load()


def patch_entry_points(monkeypatch: pytest.MonkeyPatch, *extra: Any) -> None:
    """Installed entry points (the built-ins, maybe the example plugin) plus ``extra``."""
    real = list(md.entry_points(group="tokencompress"))

    def entry_points(**kwargs: Any) -> list[Any]:
        assert kwargs == {"group": "tokencompress"}
        return [*real, *extra]

    monkeypatch.setattr(registry_module.md, "entry_points", entry_points)


def broken_import() -> Any:
    raise ImportError("No module named 'torch_scatter'")


class AttentionProbe(TokenStrategy):
    """A post_vit strategy that needs the encoder's attention, which LLaVA-OV's target cannot give:
    binding it must fail naming the strategy, the target and the need."""

    name = "attention_probe"
    stage = Stage.POST_VIT
    needs = frozenset({Capability.ATTENTION})
    changes_count = False

    def apply(self, tokens, state, chunk):
        return tokens


STRIDE = textwrap.dedent(
    """
    import torch
    from tokencompress import PerFrameParams, ScoringPruner, Stage, hookimpl

    class StrideParams(PerFrameParams):
        tokens_per_frame: int = 4

    class Stride(ScoringPruner):
        name = "stride_from_file"
        stage = Stage.PRE_PREFILL
        Params = StrideParams

        def score(self, tokens, state, chunk):
            return -(tokens.local_index() % 3).double()

    @hookimpl
    def tokencompress_register_strategies(registrar):
        registrar.add_strategy(Stride)
    """
)
"""A plugin file (``--plugin stride.py``): a per-frame pruner keeping the tokens whose index is a
multiple of 3 first; tests write it to a temporary directory."""
