"""A map bounded in entries and in total weight, least recently used out first: the
proxy's in-memory maps (inbound verdicts, hit heads and variants, the store's hot
entries, the express lane's answers).  Not ``cachetools.LRUCache``: its lookup goes
through ``__getitem__`` (a miss through an exception), about twice the cost of this
``get``, which the express lane pays on every request it answers.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    """At most ``max_entries`` entries and ``max_weight`` total ``weigh(value)`` (None:
    no bound); values are never None.  A found entry becomes the most recently used."""

    def __init__(
        self,
        max_entries: int | None = None,
        *,
        max_weight: int | None = None,
        weigh: Callable[[V], int] = lambda value: 0,
    ) -> None:
        self.max_entries, self.max_weight, self._weigh = max_entries, max_weight, weigh
        self.weight = 0
        self._entries: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        """Store ``value``, then drop the least recently used while over a bound."""
        self.pop(key)
        self._entries[key] = value
        self.weight += self._weigh(value)
        while (self.max_entries is not None and len(self._entries) > self.max_entries) or (
            self.max_weight is not None and self.weight > self.max_weight
        ):
            self.pop(next(iter(self._entries)))

    def pop(self, key: K) -> V | None:
        value = self._entries.pop(key, None)
        if value is not None:
            self.weight -= self._weigh(value)
        return value

    def clear(self) -> None:
        self._entries.clear()
        self.weight = 0
