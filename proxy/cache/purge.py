"""Purges (``DELETE /admin/cache``, ``DELETE /admin/cache/studies/{uid}``), and what
the cache may still serve while one runs.

Deleting thousands of files takes seconds, so the deletion runs in a thread
(:meth:`Store.delete`); the memory views are dropped first, on the loop thread, and from
the moment a purge is asked nothing it removes is served: entries stored before a full
purge began, or entries of the study being purged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from proxy.cache.store import Hit, Store


class Purges:
    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock  # the clock that stamped Meta.stored_at
        self._studies: set[str] = set()  # studies being purged
        self._before = 0.0  # entries stored before a full purge began

    def lookup(self, key: str, study: str | None) -> Hit | None:
        """The stored entry, unless a purge under way removes it."""
        if study is not None and study in self._studies:
            return None
        hit = self.store.get(key)
        if hit is not None and hit.meta.stored_at < self._before:
            return None
        return hit

    async def everything(self) -> int:
        """Every entry; the number removed."""
        self._before = self.clock()
        self.store.forget_all()
        return await asyncio.to_thread(self.store.delete)

    async def study(self, study: str) -> int:
        """One study's entries (its study/series entries and its instances)."""
        self._studies.add(study)
        self.store.forget_all()
        try:
            return await asyncio.to_thread(self.store.delete, [f"s:{study}", f"i:{study}"])
        finally:
            self._studies.discard(study)
