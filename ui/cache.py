"""A least-recently-used map bounded in bytes, entries and age: what the dashboard caches its diagnoses in.

Streamlit's own caches bound entries and age but not bytes, and pickle a copy of the value for
every reader; this one holds each value once, shared by every session, and forgets the least
recently used values first when the bytes it holds would pass its limit.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


class ByteLRU:
    """Thread-safe LRU map whose values are counted by the bytes the caller says they hold."""

    def __init__(self, max_bytes: int, max_entries: int | None = None, ttl_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        """Args:
            max_bytes: bytes held at most (a value larger than this is not kept at all).
            max_entries: values held at most (None: no count limit).
            ttl_s: seconds a value is kept after it was stored (None: until pushed out).
            clock: seconds, monotonic (tests pass a fake one).
        """
        self.max_bytes, self.max_entries, self.ttl_s, self._clock = int(max_bytes), max_entries, ttl_s, clock
        self._items: OrderedDict[Hashable, tuple[Any, int, float]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """Bytes held now (as counted by `put`)."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable, default: Any = None) -> Any:
        """The value stored under `key` (now the most recently used), or `default` if absent or expired."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return default
            if self.ttl_s is not None and self._clock() - item[2] > self.ttl_s:
                self._drop(key)
                return default
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: Hashable, value: Any, nbytes: int) -> None:
        """Store `value` (holding `nbytes`), dropping the least recently used values to make room."""
        with self._lock:
            if key in self._items:
                self._drop(key)
            if nbytes > self.max_bytes:
                return
            self._items[key] = (value, int(nbytes), self._clock())
            self._bytes += int(nbytes)
            limit = self.max_entries if self.max_entries is not None else len(self._items)
            while self._bytes > self.max_bytes or len(self._items) > limit:
                self._drop(next(iter(self._items)))

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def _drop(self, key: Hashable) -> None:
        self._bytes -= self._items.pop(key)[1]
