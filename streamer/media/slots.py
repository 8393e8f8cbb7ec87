"""The one latest-frame slot: between a source and the GPU worker, and in front of every sink.

A live slot holds at most ``capacity`` items and a newer one replaces the oldest (a drop, counted); a
lossless slot makes ``put`` wait for room instead (a file read as fast as the model goes loses nothing).
What goes in is whatever the producer has cheapest (a decoded ``av.VideoFrame``, a camera's BGR array):
the taker converts only what it takes, so a frame replaced before anyone wanted it is never converted.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class SlotTimeout(TimeoutError):
    """Nothing new arrived within the wait."""


class FrameSlot(Generic[T]):
    """At most ``capacity`` items; ``take`` returns each item once, oldest first.

    ``put`` (live) replaces the oldest item when full and returns how many it pushed out; (``lossless``)
    waits for room and returns 0. ``take(timeout)`` returns an item, raises :class:`SlotTimeout` when none
    came in time, and after ``close`` returns what is left, then None (or raises the error given to
    ``close``). Thread-safe.
    """

    def __init__(self, capacity: int = 1, *, lossless: bool = False) -> None:
        self.capacity = capacity
        self.lossless = lossless
        self.dropped = 0
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._ever = False
        self._error: BaseException | None = None

    def put(self, item: T) -> int:
        """Add ``item``; return how many older items it pushed out. After ``close`` it is discarded."""
        with self._cond:
            dropped = 0
            if self.lossless:
                self._cond.wait_for(lambda: len(self._items) < self.capacity or self._closed)
            if self._closed:
                return 0
            while len(self._items) >= self.capacity:
                self._items.popleft()
                dropped += 1
            self.dropped += dropped
            self._items.append(item)
            self._ever = True
            self._cond.notify_all()
            return dropped

    def take(self, timeout: float | None = None) -> T | None:
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._closed, timeout):
                raise SlotTimeout(f"nothing new within {timeout:g} s")
            if self._items:
                item = self._items.popleft()
                self._cond.notify_all()
                return item
            if self._error is not None:
                raise self._error
            return None

    def close(self, error: BaseException | None = None, *, discard: bool = False) -> int:
        """No more items; ``take`` drains what is left (nothing with ``discard``), then returns None or
        raises ``error``. Wakes a ``put`` waiting for room."""
        with self._cond:
            self._closed = True
            self._error = self._error or error
            if discard:
                self._items.clear()
            self._cond.notify_all()

    def wait_first(self, timeout: float) -> bool:
        """True once an item arrived or the slot closed; False after ``timeout`` seconds."""
        with self._cond:
            return self._cond.wait_for(lambda: self._ever or self._closed, timeout)

    @property
    def error(self) -> BaseException | None:
        return self._error
