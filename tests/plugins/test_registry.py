"""Plugin discovery and the hooks (docs/design.md §5): built-ins and third-party plugins go through one path.

Third-party plugins are simulated in memory (``Registry(plugins=[...])``) or, where the entry-point
machinery itself is under test, with fake entry points, so these tests never depend on what else
happens to be installed. The one real out-of-tree package, ``plugins/tokencompress-uniform``, is
checked when installed (CI installs it).
"""

from __future__ import annotations

import importlib.metadata as md

import pytest
import torch

from tests.support.plugin_fakes import (
    FakeEntryPoint,
    KeepFirst,
    broken_import,
    needs_uniform,
    patch_entry_points,
    plugin,
    strategy_named,
)
from tokencompress import (
    Pipeline,
    PluginError,
    Registry,
    Stage,
    TokenCompressError,
    TokenStrategy,
)
from tokencompress.api.strategy import BlockStrategy
from tokencompress.plugins.registry import DISABLE_ENV
from tokencompress.targets.llava.llava_onevision import LlavaOnevisionTarget

BUILTIN_STRATEGIES = {"stc_cacher", "stc_pruner"}


# ----------------------------------------------------------------- helpers


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
def test_duplicate_names_fail_only_where_used() -> None:
    """Two packages registering one name break only the pipelines that name it."""
    first, second = strategy_named("dup"), strategy_named("dup")
    reg = Registry(plugins=[plugin("pkg-alpha", [first]), plugin("pkg-beta", [second])])
    with pytest.raises(PluginError) as exc:
        reg.strategy("dup")
    msg = str(exc.value)
    assert "'dup'" in msg and "pkg-alpha" in msg and "pkg-beta" in msg and DISABLE_ENV in msg
    assert "\n" not in msg
    assert "dup" not in reg.strategies and BUILTIN_STRATEGIES <= set(reg.strategies)
    (row,) = reg.describe()["conflicts"]
    assert row["name"] == "dup" and row["packages"] == ["pkg-alpha", "pkg-beta"] and row["error"] == msg
    with pytest.raises(
        TokenCompressError, match=r"stages.pre_prefill\[0\].strategy: strategy 'dup' is registered twice"
    ):
        Pipeline.from_dict({"stages": {"pre_prefill": [{"strategy": "dup"}]}}, reg)
    Pipeline.from_dict({"stages": {"pre_prefill": [{"strategy": "stc_pruner"}]}}, reg)  # others still work


def test_shadowing_a_builtin_is_a_duplicate() -> None:
    reg = Registry(plugins=[plugin("pkg-shadow", [strategy_named("stc_pruner")])])
    with pytest.raises(PluginError, match="'tokencompress'.*'pkg-shadow'"):
        reg.strategy("stc_pruner")


def test_duplicate_target_names() -> None:
    clone = type("Clone", (LlavaOnevisionTarget,), {})
    reg = Registry(plugins=[plugin("pkg-clone", targets=[clone])])
    with pytest.raises(PluginError, match="target 'llava_onevision'.*pkg-clone"):
        reg.target("llava_onevision")
    assert "qwen2_vl" in reg.targets


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


# ------------------------------------------------------------------- targets


def test_token_strategy_base_is_accepted() -> None:
    class Identity(TokenStrategy):
        name = "identity_test"
        stage = Stage.POST_VIT
        changes_count = False

        def apply(self, tokens, state, chunk):
            return tokens

    reg = Registry(plugins=[plugin("pkg-id", [Identity])])
    assert reg.strategy("identity_test") is Identity


def test_strategy_whose_class_contradicts_its_stage_is_reported():
    wrong = type("WrongStage", (KeepFirst,), {"name": "wrong_stage", "stage": Stage.PRE_VIT_BLOCK})

    class NotABlock(BlockStrategy):
        name = "block_at_prefill"
        stage = Stage.PRE_PREFILL

        def block_forward(self, call, hidden, run_next):
            return run_next(hidden)

    reg = Registry(plugins=[plugin("pkg-wrong", [wrong]), plugin("pkg-block", [NotABlock])])
    assert sorted(f.package for f in reg.failures) == ["pkg-block", "pkg-wrong"]
    assert "must subclass BlockStrategy" in " ".join(f.error for f in reg.failures)
    assert {"wrong_stage", "block_at_prefill"}.isdisjoint(reg.strategies)


def test_disable_accepts_normalised_package_names():
    reg = Registry(disable="tokencompress_uniform")
    assert "uniform_grid" not in reg.strategies


def test_a_count_changing_strategy_must_declare_its_count() -> None:
    """No silent None: a token strategy that changes the count says how many it keeps, or that it is dynamic."""

    class Silent(TokenStrategy):
        name = "silent_count"
        stage = Stage.PRE_PREFILL

        def apply(self, tokens, state, chunk):
            return tokens.take(torch.arange(min(3, tokens.count)))

    declared = type("Declared", (Silent,), {"name": "dynamic_count_ok", "dynamic_count": True})
    reg = Registry(plugins=[plugin("pkg-silent", [Silent]), plugin("pkg-declared", [declared])])
    assert [f.package for f in reg.failures] == ["pkg-silent"]
    assert "planned_count" in reg.failures[0].error and "dynamic_count = True" in reg.failures[0].error
    assert "dynamic_count_ok" in reg.strategies and declared().planned_count(16, 2) is None
    with pytest.raises(TypeError, match="does not say how many tokens it keeps"):
        Silent().planned_count(16, 2)
