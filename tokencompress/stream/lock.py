"""One caller at a time per stream: a second thread is refused at once, never let in to corrupt it.

A stream's state (the queued frames, the strategy states, the KV cache, the counters) is
advanced by whole chunks; two threads inside one stream would interleave those steps and leave
it silently wrong (more chunks than frames, a cache that matches neither). Waiting would hide the
mistake and can deadlock a generator, so a call from a second thread while another thread's call
is running raises :class:`~tokencompress.api.errors.StreamBusyError` before it touches anything.

The lock belongs to a thread, not to a call: the thread holding it may call the stream again
(``ask`` flushes through ``flush``; a loop over ``add_video`` may ``ask`` between chunks). A
generator entry point (``add_video``) holds it from its first ``next()`` until it is exhausted,
closed or garbage-collected, so another thread is refused while the video is half streamed.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from ..api.errors import StreamBusyError

__all__ = ["StreamLock", "one_caller"]

C = TypeVar("C", bound=type)

BUSY = (
    "this stream is in use by another thread; a stream takes one caller at a time: "
    "give each thread its own stream or serialise the calls"
)


class StreamLock:
    """A non-blocking, thread-owned, re-entrant lock: ``acquire`` takes it or raises at once."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()  # held only for the check-and-set, never across a call
        self._owner: int | None = None
        self._depth = 0

    def acquire(self) -> None:
        me = threading.get_ident()
        with self._mutex:
            if self._owner is not None and self._owner != me:
                raise StreamBusyError(BUSY)
            self._owner = me
            self._depth += 1

    def release(self) -> None:
        """Release one hold (from any thread: a generator may be closed where it was not started)."""
        with self._mutex:
            self._depth -= 1
            if self._depth <= 0:
                self._owner, self._depth = None, 0

    @property
    def held(self) -> bool:
        return self._owner is not None


def _exclusive(fn: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator(self: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
            self._lock.acquire()  # runs at the first next(), with the generator's body
            try:
                yield from fn(self, *args, **kwargs)
            finally:
                self._lock.release()

        return generator

    @functools.wraps(fn)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        self._lock.acquire()
        try:
            return fn(self, *args, **kwargs)
        finally:
            self._lock.release()

    return call


def one_caller(*names: str) -> Callable[[C], C]:
    """Class decorator: the methods ``names`` take the instance's ``_lock`` (a :class:`StreamLock`)."""

    def wrap(cls: C) -> C:
        for name in names:
            setattr(cls, name, _exclusive(cls.__dict__[name]))
        return cls

    return wrap
