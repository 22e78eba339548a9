"""A chunk is a transaction: a stream is advanced by a whole chunk or left exactly as it was.

A failure inside a chunk (a plugin error, out-of-memory, Ctrl-C in a notebook) can come after
some strategy already moved its state (the Cacher's counter, the Pruner's memory) or after some
LLM layers already appended their keys. The snapshot taken before the chunk holds a copy
of every strategy state (``Strategy.copy_state``: a deep copy unless the strategy knows a cheaper
one that later chunks cannot change), the LLM state's small fields and the cache length, and the
stream's counters; restoring it crops every cache layer back to its length, so the next chunk
runs exactly as on a stream that never saw the failed one.

Cost: one copy of the strategy states per chunk. The Cacher's reference tensors (layers x tokens
x width floats) are replaced, never written in place, so its copy shares them and costs nothing
but a few dicts; a deep copy of them would also take fresh pages every chunk.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

__all__ = ["StreamSnapshot", "crop_cache"]

_COUNTERS = ("chunks_done", "frames_seen", "token_frames_seen", "_prefixed")


def crop_cache(cache: Any, length: int) -> None:
    """Every layer of a transformers cache back to at most ``length`` tokens (layers that a
    failed prefill reached hold more than the others, so the cut is per layer)."""
    for layer in getattr(cache, "layers", []):
        extra = layer.get_seq_length() - length
        if extra > 0:
            layer.crop(-extra)


@dataclass
class StreamSnapshot:
    states: list[Any]
    llm_fields: dict[str, Any]
    cache_length: int
    counters: dict[str, Any]
    history: int
    waiting: list[Any]
    """Decoder inputs of chunks waiting for a group prefill (immutable; the list is copied)."""

    @classmethod
    def take(cls, stream: Any) -> StreamSnapshot:
        llm = stream.llm
        # the cache is cropped instead of copied; the tokenizer is shared and never changes
        fields = {k: copy.deepcopy(v) for k, v in vars(llm).items() if k not in ("cache", "tokenizer")}
        return cls(
            states=stream.bound.copy_states(stream.states),
            llm_fields=fields,
            cache_length=llm.length,
            counters={k: getattr(stream, k) for k in _COUNTERS},
            history=len(stream.history),
            waiting=list(getattr(stream, "_waiting", ())),
        )

    def restore(self, stream: Any) -> None:
        stream.states = self.states
        crop_cache(stream.llm.cache, self.cache_length)
        for k, v in self.llm_fields.items():
            setattr(stream.llm, k, v)
        for k, v in self.counters.items():
            setattr(stream, k, v)
        del stream.history[self.history :]
        stream._waiting = list(self.waiting)
