"""Plugin discovery and the hooks (DESIGN §5): built-ins and third-party plugins go through one path.

Third-party plugins are simulated in memory (``Registry(plugins=[...])``) or, where the entry-point
machinery itself is under test, with fake entry points, so these tests never depend on what else
happens to be installed. The one real out-of-tree package, ``plugins/tokencompress-uniform``, is
checked when installed (CI installs it).
"""

from __future__ import annotations

import importlib.metadata as md
import types
from collections.abc import Callable, Iterable
from typing import Any

import pytest
import torch
from torch import nn

from tests.conftest import random_frames
from tokencompress import (
    ChunkInfo,
    CompatibilityError,
    ConfigError,
    PerFrameParams,
    Pipeline,
    PluginError,
    Registry,
    ScoringPruner,
    Stage,
    StageEvent,
    TokenStrategy,
    VisualTokens,
    hookimpl,
)
from tokencompress import registry as registry_module
from tokencompress.registry import DISABLE_ENV
from tokencompress.targets.llava_onevision import LlavaOnevisionTarget

BUILTIN_STRATEGIES = {"stc_cacher", "stc_pruner"}


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


# ----------------------------------------------------------------- helpers
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


# ---------------------------------------------------------------- built-ins
def test_builtins_are_registered_by_package_tokencompress() -> None:
    reg = Registry()
    for name in BUILTIN_STRATEGIES:
        assert reg.strategies[name].package == "tokencompress"
    assert reg.targets["llava_onevision"].package == "tokencompress"
    assert reg.targets["llava_onevision"].cls is LlavaOnevisionTarget
    assert reg.failures == []
    listing = reg.describe()
    assert {
        "name": "stc_pruner",
        "package": "tokencompress",
        "version": md.version("tokencompress"),
    }.items() <= next(row for row in listing["strategies"] if row["name"] == "stc_pruner").items()


def test_builtins_without_entry_points() -> None:
    """A source checkout that was never installed still gets the built-ins (direct-import fallback)."""
    reg = Registry(entry_points=False)
    assert BUILTIN_STRATEGIES <= set(reg.strategies)
    assert {r.package for r in reg.strategies.values()} == {"tokencompress"}


def test_registries_are_independent() -> None:
    a = Registry(plugins=[plugin("pkg-a", [strategy_named("only_in_a")])])
    b = Registry()
    assert "only_in_a" in a.strategies and "only_in_a" not in b.strategies


@needs_uniform
def test_example_plugin_listed_with_package_and_version() -> None:
    listing = Registry().describe()
    row = next(r for r in listing["strategies"] if r["name"] == "uniform_grid")
    assert row["package"] == "tokencompress-uniform"
    assert row["version"] == md.version("tokencompress-uniform") == "0.1.0"
    assert row["stage"] == "pre_prefill"
    assert any(p["package"] == "tokencompress-uniform" for p in listing["plugins"])


# --------------------------------------------------------------- conflicts
def test_duplicate_names_name_both_packages() -> None:
    first, second = strategy_named("dup"), strategy_named("dup")
    with pytest.raises(PluginError) as exc:
        Registry(plugins=[plugin("pkg-alpha", [first]), plugin("pkg-beta", [second])])
    msg = str(exc.value)
    assert "'dup'" in msg and "pkg-alpha" in msg and "pkg-beta" in msg and DISABLE_ENV in msg
    assert "\n" not in msg


def test_shadowing_a_builtin_is_a_duplicate() -> None:
    with pytest.raises(PluginError, match="'tokencompress'.*'pkg-shadow'"):
        Registry(plugins=[plugin("pkg-shadow", [strategy_named("stc_pruner")])])


def test_duplicate_target_names() -> None:
    clone = type("Clone", (LlavaOnevisionTarget,), {})
    with pytest.raises(PluginError, match="target 'llava_onevision'.*pkg-clone"):
        Registry(plugins=[plugin("pkg-clone", targets=[clone])])


# ----------------------------------------------------------------- failures
def test_failing_registration_is_reported_and_others_keep_working() -> None:
    def tokencompress_register_strategies(registrar):
        raise RuntimeError("kaboom")

    good = plugin("pkg-good", [strategy_named("good_one")])
    bad = plugin("pkg-bad", tokencompress_register_strategies=tokencompress_register_strategies)
    with pytest.warns(RuntimeWarning, match="pkg-bad"):
        reg = Registry(plugins=[bad, good])
    assert [(f.package, "kaboom" in f.error) for f in reg.failures] == [("pkg-bad", True)]
    assert {"good_one", *BUILTIN_STRATEGIES} <= set(reg.strategies)
    assert reg.describe()["failed"][0]["package"] == "pkg-bad"


def test_registering_a_non_strategy_is_reported() -> None:
    class NotAStrategy:
        name = "imposter"

    with pytest.warns(RuntimeWarning):
        reg = Registry(plugins=[plugin("pkg-odd", [NotAStrategy])])
    assert "imposter" not in reg.strategies
    assert "not a tokencompress Strategy subclass" in reg.failures[0].error


def test_failing_entry_point_import_is_reported_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    good = plugin("pkg-fine", [strategy_named("fine_one")])
    patch_entry_points(
        monkeypatch,
        FakeEntryPoint("broken", "pkg-broken", broken_import),
        md.EntryPoint(name="ghost", value="tokencompress_no_such_module_xyz", group="tokencompress"),
        FakeEntryPoint("fine", "pkg-fine", lambda: good),
    )
    with pytest.warns(RuntimeWarning, match="torch_scatter"):
        reg = Registry()
    failed = {f.name: f.error for f in reg.failures}
    assert "torch_scatter" in failed["pkg-broken:broken"] and failed["pkg-broken:broken"].startswith(
        "import failed"
    )
    assert "tokencompress_no_such_module_xyz" in failed["unknown:ghost"]
    assert {"fine_one", *BUILTIN_STRATEGIES} <= set(reg.strategies)
    assert reg.strategies["fine_one"].package == "pkg-fine"
    assert "llava_onevision" in reg.targets


# --------------------------------------------------------------- disabling
@pytest.mark.parametrize("value", ["1", "all", "pkg-extra", "extra", "pkg-other, pkg-extra"])
def test_disable_env_blocks_third_party_never_builtins(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    extra = plugin("pkg-extra", [strategy_named("extra_one")])
    patch_entry_points(monkeypatch, FakeEntryPoint("extra", "pkg-extra", lambda: extra))
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    assert "extra_one" in Registry().strategies

    monkeypatch.setenv(DISABLE_ENV, value)
    reg = Registry()
    assert "extra_one" not in reg.strategies
    assert "pkg-extra:extra" in reg.blocked
    assert BUILTIN_STRATEGIES <= set(reg.strategies) and "llava_onevision" in reg.targets


@pytest.mark.parametrize("value", ["1", "tokencompress", "builtin_strategies,builtin_targets"])
def test_builtins_cannot_be_disabled(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(DISABLE_ENV, value)
    reg = Registry()
    assert BUILTIN_STRATEGIES <= set(reg.strategies) and "llava_onevision" in reg.targets
    assert not any(b.startswith("tokencompress:") for b in reg.blocked)


@needs_uniform
@pytest.mark.parametrize("value", ["1", "tokencompress-uniform"])
def test_disable_env_blocks_the_example_plugin(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(DISABLE_ENV, value)
    reg = Registry()
    assert "uniform_grid" not in reg.strategies and "tokencompress-uniform:uniform" in reg.blocked
    assert BUILTIN_STRATEGIES <= set(reg.strategies)


def test_disable_argument_overrides_env(monkeypatch: pytest.MonkeyPatch) -> None:
    extra = plugin("pkg-extra", [strategy_named("extra_one")])
    patch_entry_points(monkeypatch, FakeEntryPoint("extra", "pkg-extra", lambda: extra))
    monkeypatch.setenv(DISABLE_ENV, "1")
    assert "extra_one" in Registry(disable="").strategies


# ----------------------------------------------------------------- hookspecs
def test_a_misspelt_hook_is_reported_and_the_others_keep_working() -> None:
    def tokencompress_register_strategy(registrar):  # missing the final "s"
        registrar.add_strategy(KeepFirst)

    typo = plugin("pkg-typo", tokencompress_register_strategy=tokencompress_register_strategy)
    reg = Registry(plugins=[typo])
    assert [f.package for f in reg.failures] == ["pkg-typo"]
    assert "tokencompress_register_strategy" in reg.failures[0].error
    assert BUILTIN_STRATEGIES <= set(reg.strategies)


def test_hook_with_wrong_argument_name_is_reported() -> None:
    def tokencompress_register_strategies(registry):
        pass

    reg = Registry(
        plugins=[plugin("pkg-args", tokencompress_register_strategies=tokencompress_register_strategies)]
    )
    assert [f.package for f in reg.failures] == ["pkg-args"]
    assert BUILTIN_STRATEGIES <= set(reg.strategies)


# ------------------------------------------------------------------ observers
def test_stage_finished_sees_every_stage_of_every_chunk(tiny_llava_ov: nn.Module) -> None:
    events: list[StageEvent] = []

    def tokencompress_stage_finished(event):
        events.append(event)

    reg = Registry(plugins=[plugin("pkg-metrics", tokencompress_stage_finished=tokencompress_stage_finished)])
    pipe = Pipeline.from_dict(
        {"stages": {"pre_prefill": [{"strategy": "stc_pruner", "tokens_per_frame": 5}]}}, reg
    )
    with pipe.apply(tiny_llava_ov) as bound:
        stream = bound.stream()
        stats = stream.add_frames(random_frames(3))
    assert len(stats) == 3
    got = [(e.stream_id, e.chunk_index, e.stage, e.tokens_in, e.tokens_out) for e in events]
    assert got == [
        (stream.id, c, stage, n_in, n_out)
        for c in range(3)
        for stage, n_in, n_out in (
            (Stage.PRE_VIT_BLOCK, 64, 64),
            (Stage.POST_VIT, 64, 64),
            (Stage.PRE_PREFILL, 16, 5),
        )
    ]
    assert all(isinstance(e, StageEvent) and e.seconds >= 0 for e in events)


def test_no_observer_no_events() -> None:
    assert not Registry().has_observers()


# ------------------------------------------------------------------- targets
class Unsupported(nn.Module):
    pass


def test_resolve_auto(tiny_llava_ov: nn.Module) -> None:
    assert Registry().resolve_target(tiny_llava_ov) is LlavaOnevisionTarget
    assert Registry().resolve_target(tiny_llava_ov, "llava_onevision") is LlavaOnevisionTarget


def test_explicit_target_that_does_not_fit_the_model() -> None:
    with pytest.raises(CompatibilityError, match="'llava_onevision' does not support Unsupported"):
        Registry().resolve_target(Unsupported(), "llava_onevision")


def test_explicit_unknown_target_name(tiny_llava_ov: nn.Module) -> None:
    with pytest.raises(ConfigError, match="did you mean 'llava_onevision'"):
        Registry().resolve_target(tiny_llava_ov, "llava_onevison")


def test_no_target_supports_the_model() -> None:
    with pytest.raises(
        CompatibilityError, match="no registered target supports Unsupported.*llava_onevision"
    ):
        Registry().resolve_target(Unsupported())


class CustomLlava(LlavaOnevisionTarget):
    name = "custom_llava"


def test_resolve_hook_overrides_auto(tiny_llava_ov: nn.Module) -> None:
    seen: list[set[str]] = []

    def tokencompress_resolve_target(model, targets):
        seen.append(set(targets))
        return targets["custom_llava"] if isinstance(model, type(tiny_llava_ov)) else None

    reg = Registry(
        plugins=[
            plugin(
                "pkg-custom", targets=[CustomLlava], tokencompress_resolve_target=tokencompress_resolve_target
            )
        ]
    )
    assert reg.resolve_target(tiny_llava_ov) is CustomLlava
    assert len(seen) == 1 and {"llava_onevision", "custom_llava"} <= seen[0]  # plus the other built-ins
    # an explicit name still wins over the hook, and None from the hook falls back to matching
    assert reg.resolve_target(tiny_llava_ov, "llava_onevision") is LlavaOnevisionTarget
    with pytest.raises(CompatibilityError):
        reg.resolve_target(Unsupported())
    assert Pipeline.from_dict({}, reg).bind(tiny_llava_ov).target.name == "custom_llava"


def test_first_resolve_result_wins(tiny_llava_ov: nn.Module) -> None:
    def first(model, targets):
        return targets["custom_llava"]

    def second(model, targets):
        return targets["llava_onevision"]

    reg = Registry(
        plugins=[
            plugin("pkg-second", tokencompress_resolve_target=second),
            plugin("pkg-first", targets=[CustomLlava], tokencompress_resolve_target=first),
        ]
    )
    # pluggy calls the most recently registered implementation first
    assert reg.resolve_target(tiny_llava_ov) is CustomLlava


def test_token_strategy_base_is_accepted() -> None:
    class Identity(TokenStrategy):
        name = "identity_test"
        stage = Stage.POST_VIT
        changes_count = False

        def apply(self, tokens, state, chunk):
            return tokens

    reg = Registry(plugins=[plugin("pkg-id", [Identity])])
    assert reg.strategy("identity_test") is Identity
