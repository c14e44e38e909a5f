"""Single flight: one fill per key, within this process and, with ``--workers``, across
processes (SPEC section 3).

A miss *claims* its key and is told what to do (:data:`Claim`): read the fill already
under way in this process, serve the entry another worker stored while it waited, or
fill it itself, holding the cross-process lock if there is one.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from proxy.cache.fill import Fill
from proxy.cache.lock import POLL_SECONDS, KeyLocks
from proxy.cache.store import Hit, Store


@dataclass(frozen=True)
class Join:
    """A fill for the key is under way in this process: read it."""

    fill: Fill


@dataclass(frozen=True)
class Stored:
    """Another worker filled the key while this one waited: serve its entry."""

    hit: Hit


@dataclass(frozen=True)
class Lead:
    """Fill the key; ``lock`` is the cross-process lock (an fd) to release when done,
    None without ``--workers`` or when a stuck peer was given up on."""

    lock: int | None = None


Claim = Join | Stored | Lead


class SingleFlight:
    def __init__(self, store: Store, locks: KeyLocks | None, patience: float) -> None:
        """``patience``: how long to wait for another worker's fill before filling too."""
        self.store = store
        self.locks = locks
        self.patience = patience
        self.fills: dict[str, Fill] = {}  # under way in this process (Fill.register)

    async def claim(self, key: str) -> Claim:
        waited, deadline = False, time.monotonic() + self.patience
        while True:
            fill = self.fills.get(key)
            if fill is not None:
                return Join(fill)
            if self.locks is None:
                return Lead()
            lock = self.locks.try_acquire(key)
            if lock is not None:
                hit = self.store.get(key) if waited else None
                if hit is None:
                    return Lead(lock)
                KeyLocks.release(lock)
                return Stored(hit)
            if time.monotonic() > deadline:
                return Lead()  # a stuck peer must not stall this request: fill unlocked
            waited = True
            await asyncio.sleep(POLL_SECONDS)
