"""Plugin discovery: built-ins and third-party packages register through the same pluggy hooks.

A :class:`Registry` is an ordinary object (no process-wide instance): build one, look strategies
and targets up by name, resolve a target for a model. Entry points in the ``tokencompress``
group are loaded at construction; the built-ins are entry points of this package too, with a
direct-import fallback for source checkouts that were never installed.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata as md
import os
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pluggy

from ..api.errors import ConfigError, PluginError
from . import hookspecs
from .events import StageEvent
from .markers import PROJECT
from .registrar import Registrar, Registration

__all__ = ["Registry", "PluginInfo", "PluginFailure", "DISABLE_ENV", "close_matches"]

DISABLE_ENV = "TOKENCOMPRESS_DISABLE_PLUGINS"
"""``1``/``all``/``*`` blocks every third-party plugin; otherwise a comma list of entry-point or package names."""

BUILTIN_PACKAGE = "tokencompress"
BUILTIN_MODULES = ("tokencompress.strategies.builtin", "tokencompress.targets.builtin")


@dataclass(frozen=True)
class PluginInfo:
    name: str
    package: str
    version: str
    module: str


@dataclass(frozen=True)
class PluginFailure:
    name: str
    package: str
    error: str


def close_matches(word: str, options: Iterable[str]) -> str:
    """``" (did you mean 'a' or 'b'?)"`` or ``""``, for error messages."""
    hits = difflib.get_close_matches(word, list(options), n=3, cutoff=0.5)
    if not hits:
        return ""
    return " (did you mean " + " or ".join(f"'{h}'" for h in hits) + "?)"


def _check_stage_kind(cls: type) -> None:
    """A strategy's base class decides how it is called; its declared stage must agree."""
    from ..api.decode_policy import DecodePolicy
    from ..api.kv_cache_strategy import KVCacheStrategy
    from ..api.strategy import BlockStrategy, Strategy, TokenStrategy, count_undeclared
    from ..api.types import Stage

    stage = getattr(cls, "stage", None)
    if not isinstance(stage, Stage):
        raise TypeError(f"{cls.__qualname__}.stage must be a tokencompress.Stage, got {stage!r}")
    if (stage == Stage.KV_CACHE) != issubclass(cls, (KVCacheStrategy, DecodePolicy)):
        want = (
            "KVCacheStrategy or DecodePolicy" if stage == Stage.KV_CACHE else "a token or block strategy base"
        )
        raise TypeError(f"{cls.__qualname__} declares stage {stage.value} and must subclass {want}")
    if stage == Stage.KV_CACHE:
        return
    from ..api.in_decoder import InDecoderStrategy

    if (stage == Stage.IN_DECODER) != issubclass(cls, InDecoderStrategy):
        want = "InDecoderStrategy" if stage == Stage.IN_DECODER else "a token or block strategy base"
        raise TypeError(f"{cls.__qualname__} declares stage {stage.value} and must subclass {want}")
    if stage == Stage.IN_DECODER:
        return
    if (stage == Stage.PRE_VIT_BLOCK) != issubclass(cls, BlockStrategy):
        want = "BlockStrategy" if stage == Stage.PRE_VIT_BLOCK else "TokenStrategy"
        raise TypeError(f"{cls.__qualname__} declares stage {stage.value} and must subclass {want}")
    if stage != Stage.PRE_VIT_BLOCK and not issubclass(cls, TokenStrategy):
        raise TypeError(f"{cls.__qualname__} declares stage {stage.value} and must subclass TokenStrategy")
    if cls.changes_count and not cls.dynamic_count and cls.planned_count is Strategy.planned_count:
        raise TypeError(count_undeclared(cls))


def _canonical(name: str) -> str:
    """PEP 503 normalised package name, so ``tokencompress_uniform`` blocks ``tokencompress-uniform``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _version(package: str) -> str:
    try:
        return md.version(package)
    except md.PackageNotFoundError:
        return "source"


class Registry:
    """Strategies and targets known to this process, each with the package that registered it."""

    def __init__(
        self,
        *,
        entry_points: bool = True,
        plugins: Iterable[Any] = (),
        disable: str | None = None,
    ) -> None:
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: list[PluginInfo] = []
        self.failures: list[PluginFailure] = []
        self.blocked: list[str] = []
        self._package_of: dict[int, tuple[str, str]] = {}
        disable = os.environ.get(DISABLE_ENV, "") if disable is None else disable
        blocked = {_canonical(s.strip()) for s in disable.split(",") if s.strip()}

        loaded_builtin = False
        if entry_points:
            for ep in md.entry_points(group=PROJECT):
                package = ep.dist.name if ep.dist is not None else "unknown"
                is_builtin = package == BUILTIN_PACKAGE and ep.value in BUILTIN_MODULES
                if not is_builtin and (blocked & {"1", "all", "*", _canonical(ep.name), _canonical(package)}):
                    self.blocked.append(f"{package}:{ep.name}")
                    continue
                try:
                    obj = ep.load()
                except (Exception, SystemExit) as exc:  # a broken plugin must not take the others down
                    self._fail(f"{package}:{ep.name}", package, f"import failed: {type(exc).__name__}: {exc}")
                    continue
                self._add(obj, f"{package}:{ep.name}", package)
                loaded_builtin |= is_builtin
        if not loaded_builtin:
            for mod in BUILTIN_MODULES:
                self._add(
                    importlib.import_module(mod),
                    f"{BUILTIN_PACKAGE}:{mod}",  # unique per module: both are named builtin.py
                    BUILTIN_PACKAGE,
                )
        for i, obj in enumerate(plugins):
            package = getattr(obj, "__tokencompress_package__", None) or getattr(
                obj, "__name__", f"plugin{i}"
            )
            self._add(obj, f"{package}:{i}", package)

        self.strategies: dict[str, Registration] = {}
        self.targets: dict[str, Registration] = {}
        self.conflicts: dict[str, list[Registration]] = {}
        """Names registered more than once, with every registration; such a name resolves to nothing."""
        self._kinds: dict[str, str] = {}
        self._silenced: set[str] = set()
        self.observer_faults: list[str] = []
        self._collect("tokencompress_register_strategies", "strategies", self.strategies)
        self._collect("tokencompress_register_targets", "targets", self.targets)

    # ---------------------------------------------------------- registration
    def _fail(self, name: str, package: str, error: str) -> None:
        self.failures.append(PluginFailure(name, package, error))
        warnings.warn(f"tokencompress plugin {name} was skipped: {error}", RuntimeWarning, stacklevel=3)

    def _add(self, obj: Any, name: str, package: str) -> None:
        if self.pm.is_registered(obj):
            return
        try:
            self.pm.register(obj, name=name)
        except Exception as exc:  # e.g. a hookimpl with a wrong signature
            self._fail(name, package, f"registration failed: {type(exc).__name__}: {exc}")
            return
        unknown = [c.name for c in self.pm.get_hookcallers(obj) or [] if c.spec is None]
        if unknown:
            self.pm.unregister(obj)
            self._fail(name, package, f"implements unknown hook(s) {', '.join(unknown)} (misspelt?)")
            return
        version = _version(package)
        self._package_of[id(obj)] = (package, version)
        self.plugins.append(PluginInfo(name, package, version, getattr(obj, "__name__", type(obj).__name__)))

    def _collect(self, hook: str, kind: str, into: dict[str, Registration]) -> None:
        from ..api.strategy import Strategy
        from ..api.target import Target

        base = Strategy if kind == "strategies" else Target
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            package, version = self._package_of.get(id(impl.plugin), (impl.plugin_name, ""))
            registrar = Registrar(package=package, version=version)
            try:
                impl.function(registrar=registrar)
                regs = registrar.strategies if kind == "strategies" else registrar.targets
                for reg in regs:
                    if not (isinstance(reg.cls, type) and issubclass(reg.cls, base)):
                        raise TypeError(f"{reg.cls!r} is not a tokencompress {base.__name__} subclass")
                    if kind == "strategies":
                        _check_stage_kind(reg.cls)
            except (Exception, SystemExit) as exc:
                self._fail(
                    impl.plugin_name, package, f"registering {kind} failed: {type(exc).__name__}: {exc}"
                )
                continue
            for reg in regs:
                clash = self.conflicts.get(reg.name)
                if clash is not None:
                    clash.append(reg)
                elif reg.name in into:
                    # only pipelines naming it fail (PluginError on lookup); everything else works
                    self.conflicts[reg.name] = [into.pop(reg.name), reg]
                    self._kinds[reg.name] = kind
                else:
                    into[reg.name] = reg

    # --------------------------------------------------------------- lookups
    def conflict_message(self, name: str) -> str:
        regs = self.conflicts[name]
        kind = self._kinds.get(name, "strategies")
        who = " and by ".join(
            f"package '{r.package}' ({r.cls.__module__}.{r.cls.__qualname__})" for r in regs
        )
        third = next((r.package for r in regs if r.package != BUILTIN_PACKAGE), regs[-1].package)
        return (
            f"{kind[:-1].replace('ie', 'y')} '{name}' is registered twice: by {who}; uninstall one, or block "
            f"it with {DISABLE_ENV}={third}"
        )

    def _failed_note(self) -> str:
        """Unknown names are often a plugin that did not load: say which did not."""
        if not self.failures:
            return ""
        names = ", ".join(f"{f.package} ({f.error.split(':')[0]})" for f in self.failures)
        return f"; plugins that failed to load: {names} (see tokencompress plugins)"

    def strategy(self, name: str) -> type:
        """The strategy class registered as ``name``; ConfigError with close matches otherwise."""
        if name in self.conflicts and self._kinds.get(name) == "strategies":
            raise PluginError(self.conflict_message(name))
        try:
            return self.strategies[name].cls
        except KeyError:
            raise ConfigError(
                f"unknown strategy '{name}'{close_matches(name, self.strategies)}; "
                f"known: {', '.join(sorted(self.strategies))}{self._failed_note()}"
            ) from None

    def target(self, name: str) -> type:
        if name in self.conflicts and self._kinds.get(name) == "targets":
            raise PluginError(self.conflict_message(name))
        try:
            return self.targets[name].cls
        except KeyError:
            raise ConfigError(
                f"unknown target '{name}'{close_matches(name, self.targets)}; known: auto, "
                f"{', '.join(sorted(self.targets))}{self._failed_note()}"
            ) from None

    def resolve_target(self, model: Any, name: str = "auto") -> type:
        """Target class for ``model``: the named one, a plugin's choice, or the first that matches."""
        if name != "auto":
            cls = self.target(name)
            if not cls.matches(model):
                from ..api.errors import CompatibilityError

                raise CompatibilityError(
                    f"target '{name}' does not support {type(model).__name__}; use target: auto or one of "
                    f"{', '.join(n for n, r in self.targets.items() if r.cls.matches(model)) or 'no registered target'}"
                )
            return cls
        targets = {n: r.cls for n, r in self.targets.items()}
        chosen = self.pm.hook.tokencompress_resolve_target(model=model, targets=targets)
        if chosen is not None:
            return chosen
        for cls in targets.values():
            if cls.matches(model):
                return cls
        from ..api.errors import CompatibilityError

        raise CompatibilityError(
            f"no registered target supports {type(model).__name__}; targets: {', '.join(sorted(targets))}"
        )

    # ------------------------------------------------------------- observers
    def has_observers(self) -> bool:
        return bool(self.pm.hook.tokencompress_stage_finished.get_hookimpls())

    def notify(self, event: StageEvent) -> None:
        """Call every observer; one that raises is reported once (a RuntimeWarning naming it,
        its package and the event) and not called again by this registry, so metrics code can
        never abort a stream."""
        for impl in self.pm.hook.tokencompress_stage_finished.get_hookimpls():
            if impl.plugin_name in self._silenced:
                continue
            try:
                impl.function(event=event)
            except Exception as exc:
                self._silenced.add(impl.plugin_name)
                package, version = self._package_of.get(id(impl.plugin), (impl.plugin_name, ""))
                message = (
                    f"observer {impl.plugin_name} ({package} {version}) failed at {event.stage.value}, chunk "
                    f"{event.chunk_index}: {type(exc).__name__}: {exc}; it is disabled for this registry"
                )
                self.observer_faults.append(message)
                warnings.warn(message, RuntimeWarning, stacklevel=2)

    def describe(self) -> dict[str, Any]:
        """JSON-ready listing for ``tokencompress plugins``."""

        def rows(regs: dict[str, Registration]) -> list[dict[str, Any]]:
            out = []
            for name, r in sorted(regs.items()):
                row = {
                    "name": name,
                    "package": r.package,
                    "version": r.version,
                    "class": f"{r.cls.__module__}.{r.cls.__qualname__}",
                }
                stage = getattr(r.cls, "stage", None)
                if stage is not None:  # a strategy: what the pipeline checks it against
                    row["stage"] = stage.value
                    row["needs"] = sorted(n.value for n in r.cls.needs)
                    row["stateful"] = bool(r.cls.stateful)
                out.append(row)
            return out

        return {
            "strategies": rows(self.strategies),
            "targets": rows(self.targets),
            "plugins": [p.__dict__ for p in self.plugins],
            "failed": [f.__dict__ for f in self.failures],
            "conflicts": [
                {
                    "name": name,
                    "kind": self._kinds.get(name, "strategies")[:-1].replace("ie", "y"),
                    "error": self.conflict_message(name),
                    "packages": [r.package for r in regs],
                }
                for name, regs in sorted(self.conflicts.items())
            ],
            "blocked": self.blocked,
        }
