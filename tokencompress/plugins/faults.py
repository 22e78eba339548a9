"""Faults of plugin code, attributed: which strategy or target, from which package, where.

A strategy's ``apply``/``block_forward`` or a target's encoder is third-party code running deep
inside a chunk. When it raises or breaks its contract (a wrong return type, a token count it
promised not to change, non-finite scores), the user needs one line naming the plugin, its
package and version, the stage and the chunk, not a traceback through the framework. The
original exception stays attached as ``__cause__`` for ``--debug``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from torch import Tensor

from ..api.errors import PluginFault, TokenCompressError
from ..api.tokens import VisualTokens

if TYPE_CHECKING:
    from .registry import Registry

__all__ = ["Attribution", "guarded", "check_tokens", "check_hidden", "check_planned"]

T = TypeVar("T")


class Attribution:
    """Names plugin objects by the package that registered them (``'stc_pruner' (tokencompress 0.1.0)``)."""

    def __init__(self, registry: Registry | None) -> None:
        self.registry = registry

    def label(self, kind: str, obj: Any) -> str:
        name = getattr(obj, "name", type(obj).__name__)
        regs = (
            {}
            if self.registry is None
            else (self.registry.strategies if kind == "strategy" else self.registry.targets)
        )
        reg = regs.get(name)
        cls = obj if isinstance(obj, type) else type(obj)
        if reg is not None and issubclass(cls, reg.cls):
            return f"{kind} '{name}' ({reg.package} {reg.version})"
        module = cls.__module__.split(".")[0]
        return f"{kind} '{name}' (module {module})"

    def fault(self, kind: str, obj: Any, where: str, detail: str) -> PluginFault:
        return PluginFault(f"{self.label(kind, obj)} failed at {where}: {detail}")


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def guarded(attribution: Attribution, kind: str, obj: Any, where: str, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``, with any non-tokencompress exception re-raised as one attributed line."""
    try:
        return fn(*args)
    except TokenCompressError:
        raise  # already one line (and already attributed if it came from deeper plugin code)
    except Exception as exc:
        raise attribution.fault(kind, obj, where, _describe(exc)) from exc


def check_tokens(
    attribution: Attribution, strategy: Any, where: str, before: VisualTokens, after: Any
) -> VisualTokens:
    """A token strategy returns a VisualTokens of the input's width, never more rows than it got,
    and exactly as many when it declares ``changes_count = False``."""
    if not isinstance(after, VisualTokens):
        raise attribution.fault(
            "strategy", strategy, where, f"apply() returned {type(after).__name__}, expected VisualTokens"
        )
    if after.tokens.shape[-1] != before.tokens.shape[-1]:
        raise attribution.fault(
            "strategy",
            strategy,
            where,
            f"apply() returned tokens of width {after.tokens.shape[-1]}, expected {before.tokens.shape[-1]}",
        )
    if after.count > before.count or (not strategy.changes_count and after.count != before.count):
        want = "exactly" if not strategy.changes_count else "at most"
        raise attribution.fault(
            "strategy",
            strategy,
            where,
            f"apply() returned {after.count} tokens, expected {want} {before.count}",
        )
    if strategy.changes_count:
        check_planned(attribution, strategy, where, before, after)
    return after


def check_planned(
    attribution: Attribution, strategy: Any, where: str, before: VisualTokens, after: VisualTokens
) -> None:
    """A count-changing strategy keeps the count its ``planned_count`` promised for an input of equal
    frames (a serving engine sizes its buffers from it). Data-dependent strategies (``planned_count``
    None) and ragged inputs (frames of different counts, after an earlier adaptive step) are exempt."""
    counts = before.counts()
    if not counts.numel() or not bool((counts == counts[0]).all()):
        return
    per, frames = int(counts[0]), before.num_frames
    planned = guarded(attribution, "strategy", strategy, where, strategy.planned_count, per, frames)
    if planned is not None and after.count != planned:
        raise attribution.fault(
            "strategy",
            strategy,
            where,
            f"apply() returned {after.count} tokens, but planned_count() promised {planned} "
            f"for {frames} frame(s) of {per} tokens; make them agree, or return None from "
            "planned_count() (dynamic_count = True) if the count depends on the data",
        )


def check_hidden(attribution: Attribution, strategy: Any, where: str, before: Tensor, after: Any) -> Tensor:
    """A block strategy returns a tensor of the input's shape unless it declares ``changes_count``."""
    if not isinstance(after, Tensor):
        raise attribution.fault(
            "strategy", strategy, where, f"block_forward() returned {type(after).__name__}, expected a Tensor"
        )
    same_rank = after.dim() == before.dim() and after.shape[-1] == before.shape[-1]
    if not same_rank or (not strategy.changes_count and after.shape != before.shape):
        raise attribution.fault(
            "strategy",
            strategy,
            where,
            f"block_forward() returned shape {tuple(after.shape)}, expected {tuple(before.shape)}",
        )
    return after
