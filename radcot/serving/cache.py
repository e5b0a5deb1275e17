"""A small thread-safe LRU cache of recent CoTs (query text -> CoT) for the service."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, Hashable, TypeVar

V = TypeVar("V")


class LRUCache(Generic[V]):
    """Least-recently-used cache of at most ``size`` entries; ``size=0`` turns it off (nothing is kept).

    Example:
        >>> c = LRUCache(2); c.put("a", 1); c.put("b", 2); c.get("a"); c.put("c", 3)
        1
        >>> c.get("b") is None, len(c)
        (True, 2)
    """

    def __init__(self, size: int):
        if size < 0:
            raise ValueError(f"cache size must be >= 0 (0 = off), got {size}")
        self.size = size
        self._data: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            if key not in self._data:
                return None
            self._data.move_to_end(key)
            return self._data[key]

    def put(self, key: Hashable, value: V) -> None:
        if self.size == 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


__all__ = ["LRUCache"]
