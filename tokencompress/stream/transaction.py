"""A chunk is a transaction: a stream is advanced by a whole chunk or left exactly as it was.

A failure inside a chunk (a plugin error, out-of-memory, Ctrl-C in a notebook) can come after
some strategy already moved its state (the Cacher's counter, the Pruner's memory), after some
LLM layers already appended their keys, or after a kv_cache memory stored some of them (ReKV's
block store). So every owner of stream state snapshots itself and restores itself:

* the :class:`~tokencompress.stream.stream.Stream`: strategy states (``Strategy.copy_state``: a
  deep copy unless the strategy knows a cheaper one), counters, history, chunks waiting for a group
  prefill, and its decoder state's snapshot;
* the :class:`~tokencompress.stream.decoder_state.DecoderState`: the LLM state's small fields and
  the cache length (restoring crops every cache layer back to it), the position guard, and the
  kv_cache memory's own snapshot;
* each :class:`~tokencompress.api.kv_cache_strategy.KVMemory`: ``snapshot()``/``restore()`` (a deep
  copy by default; ReKV keeps block counts and trims back to them).

Cost: one copy of the strategy states per chunk. The Cacher's reference tensors (layers x tokens
x width floats) are replaced, never written in place, so its copy shares them and costs nothing
but a few dicts; ReKV's store is trimmed, never copied.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

__all__ = ["StateOwner", "StreamSnapshot", "crop_cache", "transaction"]

T = TypeVar("T")


class StateOwner(Protocol):
    """What a chunk transaction needs of an owner of stream state."""

    def snapshot(self) -> Any: ...

    def restore(self, snapshot: Any) -> None: ...


@dataclass(frozen=True)
class StreamSnapshot:
    """A stream as it was before a chunk (see :meth:`~tokencompress.stream.stream.Stream.snapshot`)."""

    states: list[Any]
    counters: tuple[int, int, int, bool]
    """chunks done, frames seen, token frames seen, system prompt prefilled."""
    history: int
    waiting: list[Any]
    """Decoder inputs of chunks waiting for a group prefill (immutable; the list is copied)."""
    decoder: Any


def transaction(owner: StateOwner, work: Callable[[], T]) -> T:
    """``work()``, or on any exception (Ctrl-C included) ``owner`` as it was before it."""
    snapshot = owner.snapshot()
    try:
        return work()
    except BaseException:
        owner.restore(snapshot)
        raise


def crop_cache(cache: Any, length: int | list[int]) -> None:
    """Every layer of a transformers cache back to at most ``length`` tokens, or layer ``i`` to
    ``length[i]`` (layers that a failed prefill reached hold more than the others, and an in_decoder
    strategy leaves layers of different lengths, so the cut is per layer)."""
    for i, layer in enumerate(getattr(cache, "layers", [])):
        keep = length if isinstance(length, int) else (length[i] if i < len(length) else 0)
        extra = layer.get_seq_length() - keep
        if extra > 0:
            layer.crop(-extra)
