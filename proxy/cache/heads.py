"""Response heads of hits, kept in memory: a hit then builds no headers.

A hit's status and headers depend only on the stored entry, the public base its URLs
are rewritten to, the cache result (``X-Cache``, ``Warning``) and whether the client
gets it gzipped; the request id is added per request.  Building them (copying,
cleaning, rewriting) was a sixth of a 64 KiB hit's CPU.

Keyed by the stored file, which a refill never reuses.  Bounded by count; least
recently used first.
"""

from __future__ import annotations

from collections import OrderedDict

from proxy.responses import Head

MAX_HEADS = 8192

HeadKey = tuple[str, str, str, bool]  # file, public base, cache result, gzipped


class Heads:
    def __init__(self, max_heads: int = MAX_HEADS) -> None:
        self.max_heads = max_heads
        self._heads: OrderedDict[HeadKey, Head] = OrderedDict()

    def get(self, key: HeadKey) -> Head | None:
        head = self._heads.get(key)
        if head is not None:
            self._heads.move_to_end(key)
        return head

    def put(self, key: HeadKey, head: Head) -> None:
        self._heads[key] = head
        if len(self._heads) > self.max_heads:
            self._heads.popitem(last=False)
