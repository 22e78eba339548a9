"""User strings made safe to print: control characters escaped, so a pipeline name or a file
name cannot move the cursor, recolour, clear or beep the user's terminal.

The CLI passes every string it echoes from the user (pipeline, file, strategy and model names,
and error messages that quote them) through :func:`printable`.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["printable"]

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def printable(text: Any, keep: str = "") -> str:
    """``str(text)`` with C0 controls (``\\x00``-``\\x1f``, newline and tab included), DEL and C1
    controls (``\\x80``-``\\x9f``) written as ``\\xNN``; everything else, non-ASCII letters too, as is.
    ``keep``: controls the caller's own layout needs (``"\\n"`` for a multi-line table)."""
    return _CONTROL.sub(lambda m: m.group() if m.group() in keep else f"\\x{ord(m.group()):02x}", str(text))
