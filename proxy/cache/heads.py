"""Response heads of hits, kept in memory: a hit then builds no headers.

A hit's status and headers depend only on the stored entry, the public base its URLs
are rewritten to, the cache result (``X-Cache``, ``Warning``) and whether the client
gets it gzipped; the request id is added per request.  Building them (copying,
cleaning, rewriting) was a sixth of a 64 KiB hit's CPU.

Keyed by the stored file, which a refill never reuses.  Bounded by count; least
recently used first.
"""

from __future__ import annotations

from proxy.lru import LRU
from proxy.responses import Head

MAX_HEADS = 8192

HeadKey = tuple[str, str, str, bool]  # file, public base, cache result, gzipped


class Heads:
    def __init__(self, max_heads: int = MAX_HEADS) -> None:
        self.max_heads = max_heads
        self._heads: LRU[HeadKey, Head] = LRU(max_heads)

    def get(self, key: HeadKey) -> Head | None:
        return self._heads.get(key)

    def put(self, key: HeadKey, head: Head) -> None:
        self._heads.put(key, head)
