"""The object registration hooks receive (tox style): plugins call ``add_strategy``/``add_target``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Registrar", "Registration"]


@dataclass(frozen=True)
class Registration:
    name: str
    cls: type
    package: str
    version: str


@dataclass
class Registrar:
    """Collects registrations from one plugin; the registry checks names across plugins."""

    package: str = "unknown"
    version: str = ""
    strategies: list[Registration] = field(default_factory=list)
    targets: list[Registration] = field(default_factory=list)

    def add_strategy(self, cls: type) -> None:
        """Register a :class:`tokencompress.Strategy` subclass under ``cls.name``."""
        self.strategies.append(Registration(_name(cls), cls, self.package, self.version))

    def add_target(self, cls: type) -> None:
        """Register a :class:`tokencompress.Target` subclass under ``cls.name``."""
        self.targets.append(Registration(_name(cls), cls, self.package, self.version))


def _name(cls: Any) -> str:
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls!r} needs a non-empty class attribute 'name'")
    return name
