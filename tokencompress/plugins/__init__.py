"""pluggy hook specifications and markers: the only contract between tokencompress and its plugins."""

from .events import StageEvent
from .markers import PROJECT, hookimpl, hookspec
from .registrar import Registrar

__all__ = ["PROJECT", "hookimpl", "hookspec", "Registrar", "StageEvent"]
