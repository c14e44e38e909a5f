"""Rewritten bodies kept in memory: a metadata hit re-serves them without re-reading the
file or rewriting it again (URL rewriting was a quarter of a metadata hit's time).

Keyed by the stored file and the public base: a refilled entry is a new file, so a key
never names two different bodies.  Bounded by total bytes; least recently used first.
"""

from __future__ import annotations

from collections import OrderedDict

MAX_BYTES = 32 * 1024 * 1024


class Rewritten:
    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._bodies: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._size = 0

    def get(self, path: str, public_base: str) -> bytes | None:
        body = self._bodies.get((path, public_base))
        if body is not None:
            self._bodies.move_to_end((path, public_base))
        return body

    def put(self, path: str, public_base: str, body: bytes) -> None:
        if len(body) > self.max_bytes // 8 or (path, public_base) in self._bodies:
            return
        self._bodies[(path, public_base)] = body
        self._size += len(body)
        while self._size > self.max_bytes:
            _, dropped = self._bodies.popitem(last=False)
            self._size -= len(dropped)
