"""Command-line values checked before any model is loaded or any frame decoded.

argparse only checks that a number parses; a NaN fps, a negative token count or an empty
question would otherwise surface minutes later as a traceback or be silently accepted.
Each check raises one :class:`TokenCompressError` line naming the option and the fix.
"""

from __future__ import annotations

import argparse
import math

from ..api.errors import TokenCompressError
from ..api.value_bounds import number_problem

__all__ = ["check_args"]

_AT_LEAST_ONE = ("max_frames", "max_new_tokens", "prefill_chunks")


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def check_args(args: argparse.Namespace) -> None:
    """Refuse option values no command can use; paths are checked by :mod:`.outputs`."""
    fps = getattr(args, "fps", None)
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise TokenCompressError(f"--fps must be > 0 and finite, got {fps:g}")
    for dest in _AT_LEAST_ONE:
        value = getattr(args, dest, None)
        if value is not None and value < 1:
            raise TokenCompressError(f"{_flag(dest)} must be >= 1, got {value}")
    if getattr(args, "repeats", None) is not None or getattr(args, "warmup", None) is not None:
        from ..bench.running import check_counts

        check_counts(getattr(args, "repeats", 1), getattr(args, "warmup", 0), "--")
    for dest, value in sorted(vars(args).items()):  # the one bound of every configuration number
        problem = number_problem(value)
        if problem is not None:
            raise TokenCompressError(f"{_flag(dest)}: {problem}")
    ask = getattr(args, "ask", None)
    if ask is not None and not ask.strip():
        raise TokenCompressError("--ask needs a question; leave the option out to skip the question")
    for dest in ("json", "out", "video", "model"):
        value = getattr(args, dest, None)
        if value is not None and not str(value).strip():
            raise TokenCompressError(f"{_flag(dest)} needs a path, got an empty string")
