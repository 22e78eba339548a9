"""pluggy hook specifications and markers: the only contract between tokencompress and its plugins."""

from .markers import PROJECT, hookimpl, hookspec
from .registrar import Registrar
from .events import StageEvent

__all__ = ["PROJECT", "hookimpl", "hookspec", "Registrar", "StageEvent"]
