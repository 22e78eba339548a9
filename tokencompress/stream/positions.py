"""Position limits of a stream: warn when it nears the model's trained positions, refuse past them.

Without a kv_cache strategy every kept token takes a new position for good, so a long stream
walks past ``max_position_embeddings`` (e.g. the built-in model's 32,768 at about frame 546 with
STC). RoPE itself does not fail there, the model just runs where it was never trained; the
guard makes that visible (a :class:`PositionWarning` at ``warn_at`` of the limit, once per
stream) and refuses the chunk or question that would pass the limit, naming the kv_cache
steps the target runs that bound positions (with the parameters they need, e.g.
``{strategy: infinipot_v, positions: compact}``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

from ..api.errors import TokenCompressError

__all__ = ["PositionLimitError", "PositionWarning", "PositionGuard"]


class PositionLimitError(TokenCompressError):
    """A prefill would pass the model's ``max_position_embeddings``."""


class PositionWarning(UserWarning):
    """A stream is close to the model's ``max_position_embeddings``."""


class PositionGuard:
    """One stream's position check; ``limit <= 0`` (unknown) or ``bounded`` disables it.

    ``fixes``: the kv_cache steps (YAML flow mappings) that would bound this stream's positions.
    """

    def __init__(self, limit: int, fixes: Iterable[str], bounded: bool, warn_at: float = 0.9) -> None:
        self.limit = limit
        self.fixes = list(fixes)
        self.active = limit > 0 and not bounded
        self.warn_at = warn_at
        self.warned = False

    def _fix(self) -> str:
        if not self.fixes:
            return (
                "this target runs no kv_cache strategy that bounds positions, so end the stream (reset()) "
                "or start a new one"
            )
        return (
            f"add a kv_cache strategy that bounds positions (stages.kv_cache: [{self.fixes[0]}]; "
            f"all that do on this target: {', '.join(self.fixes)})"
        )

    def check(self, end: int, what: str) -> None:
        """Refuse ``what`` if it would need positions up to ``end`` (exclusive) past the limit."""
        if not self.active:
            return
        if end > self.limit:
            raise PositionLimitError(
                f"{what} would need positions up to {end}, past the model's max_position_embeddings "
                f"{self.limit}; {self._fix()}"
            )
        if not self.warned and end >= self.warn_at * self.limit:
            self.warned = True
            warnings.warn(
                f"{what} reaches position {end} of the model's {self.limit} (max_position_embeddings); the "
                f"stream will be refused past it: {self._fix()}",
                PositionWarning,
                stacklevel=3,
            )
