"""Hook specifications. Implementations are prefixed ``tokencompress_`` and marked with ``hookimpl``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .markers import hookspec

if TYPE_CHECKING:
    from .events import StageEvent
    from .registrar import Registrar


@hookspec
def tokencompress_register_strategies(registrar: Registrar) -> None:
    """Add strategy classes with ``registrar.add_strategy(cls)``."""


@hookspec
def tokencompress_register_targets(registrar: Registrar) -> None:
    """Add target classes with ``registrar.add_target(cls)``."""


@hookspec(firstresult=True)
def tokencompress_resolve_target(model: Any, targets: dict[str, type]) -> type | None:
    """Return the target class for ``model`` (first non-None wins), or None to pass."""


@hookspec
def tokencompress_stage_finished(event: StageEvent) -> None:
    """Observe one finished stage of one chunk (token counts, seconds)."""
