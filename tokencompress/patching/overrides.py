"""Reversible instance overrides: the one way tokencompress patches a model.

Every patch (the encoder-block routing, the decoder's kv routing, its grouped-K/V attention and
packed linears, the compiled tower) sets attributes on module *instances* for a ``with`` block and
puts back exactly what was there on exit: an instance attribute that did not exist is deleted (so
the class's method shows through again), one that did is set back. Classes and library files are
never edited, and a model that leaves ``apply()`` is bit-for-bit the model that entered it.

Each override carries a mark naming its kind, so a second ``apply()`` on the same model is refused
(:func:`refuse_nested`) instead of stacking two pipelines' routings.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from ..api.errors import TokenCompressError

__all__ = ["MARK", "Overrides", "mark", "override_kind", "refuse_nested"]

MARK = "__tokencompress_override__"
"""Attribute naming the kind of override on a function this package installed."""

_MISSING = object()


def override_kind(fn: Any) -> str | None:
    """The kind of tokencompress override ``fn`` is (``"block"``, ``"kv"``, ``"compiled"``,
    ``"probe"``, ...), or None for anything else."""
    return getattr(fn, MARK, None)


def refuse_nested(modules: Iterable[nn.Module], allow: Iterable[str] = ()) -> None:
    """Refuse modules that already carry an override (or a probe hook) of a kind not in ``allow``:
    the model is inside another ``apply()``."""
    allowed = set(allow)
    for module in modules:
        kinds = {override_kind(module.forward)} | {
            override_kind(h) for h in module._forward_pre_hooks.values()
        }
        if kinds - {None} - allowed:
            raise TokenCompressError("this model is already inside a tokencompress apply(); leave it first")


class Overrides:
    """The instance attributes one patch set, each with what it replaced; :meth:`restore` undoes all.

    ``kind`` marks every function it installs (see :func:`override_kind`).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._saved: list[tuple[Any, str, Any, bool]] = []

    @property
    def installed(self) -> bool:
        return bool(self._saved)

    def set(self, obj: Any, name: str, value: Any) -> None:
        """Set instance attribute ``name``; on restore it is deleted again if the instance had none."""
        self._saved.append((obj, name, obj.__dict__.get(name, _MISSING), True))
        setattr(obj, name, value)

    def set_value(self, obj: Any, name: str, value: Any) -> None:
        """Set ``name`` through the object's own setter (a property, e.g. a config's attention
        implementation); on restore the previous value is set back the same way."""
        self._saved.append((obj, name, getattr(obj, name), False))
        setattr(obj, name, value)

    def forward(self, module: nn.Module, fn: Callable[..., Any]) -> None:
        """Bind ``fn(module, *args, **kwargs)`` as ``module``'s instance ``forward`` (marked)."""
        mark(fn, self.kind)
        self.set(module, "forward", types.MethodType(fn, module))

    def restore(self) -> None:
        """Put every attribute back, last set first."""
        while self._saved:
            obj, name, old, instance = self._saved.pop()
            if instance and old is _MISSING:
                obj.__dict__.pop(name, None)
            else:
                setattr(obj, name, old)


def mark(fn: Callable[..., Any], kind: str) -> Callable[..., Any]:
    """Mark a function (a forward or a hook) as a tokencompress override of ``kind``."""
    setattr(fn, MARK, kind)
    return fn
