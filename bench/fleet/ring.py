"""HAProxy's consistent-hash ring, as HAProxy 2.6 builds and searches it (a pure leaf).

Read off ``src/lb_chash.c``, ``src/backend.c``, ``src/hash.c`` and
``include/haproxy/intops.h`` (v2.6.0; Debian 12 ships 2.6.12, same code):

- ``hash-type consistent`` with no function named means ``sdbm`` with the ``avalanche``
  modifier (``cfgparse-listen.c``: "sdbm+avalanche for consistent");
- each server puts ``weight × 16`` points on a 32-bit ring (``BE_WEIGHT_SCALE``), point
  ``j`` of the server with id ``puid`` at ``full_hash(puid × 4096 + j)``
  (``SRV_EWGHT_RANGE``): the points depend on the server's *id* only, never on its
  address, so a replica that comes back under the same id gets the same share;
- ``balance uri depth D`` hashes the URI up to its ``D+1``-th slash (or its ``?``), so
  with depth 3 the key of ``/dicom-web/studies/{uid}/series/…`` is
  ``/dicom-web/studies/{uid}``; ``path-only`` drops an absolute URI's authority first;
- a key goes to the *nearest* point, before or after it (``chash_get_server_hash``:
  ``dp <= dn`` picks the previous one), not strictly the next one clockwise; a down
  server's points leave the ring; a retry that must avoid the server it just tried
  walks on clockwise from there.

HAProxy 3.0 and later place point ``j`` at ``full_hash(full_hash(puid) + j)`` instead
(``chash_compute_node_key``, with ``hash-key id``, the default): other points, the same
behaviour; ``Ring(layout="3.0")`` builds that ring.

``hash-type map-based`` (``hash % total weight``) is modelled too, for the comparison.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

MASK = 0xFFFFFFFF
BE_WEIGHT_SCALE = 16
SRV_EWGHT_RANGE = 256 * BE_WEIGHT_SCALE


def sdbm(data: bytes) -> int:
    """``hash_sdbm`` (src/hash.c), 32-bit unsigned."""
    value = 0
    for byte in data:
        value = (byte + (value << 6) + (value << 16) - value) & MASK
    return value


def full_hash(a: int) -> int:
    """``__full_hash`` (intops.h): one of Bob Jenkins' avalanche functions, then × a prime."""
    a &= MASK
    a = ((a + 0x7ED55D16) + (a << 12)) & MASK
    a = ((a ^ 0xC761C23C) ^ (a >> 19)) & MASK
    a = ((a + 0x165667B1) + (a << 5)) & MASK
    a = ((a + 0xD3A2646C) ^ (a << 9)) & MASK
    a = ((a + 0xFD7046C5) + (a << 3)) & MASK
    a = ((a ^ 0xB55A4F09) ^ (a >> 16)) & MASK
    return (a * 3221225473) & MASK


def uri_key(uri: str, depth: int, *, path_only: bool = True, whole: bool = False) -> bytes:
    """What ``balance uri [depth D] [path-only] [whole]`` hashes (``get_server_uh``)."""
    if path_only and not uri.startswith("/") and "://" in uri:
        # http_parse_path: the path of an absolute URI starts at the first '/' after the
        # authority (an HTTP/2 request's URI is absolute inside HAProxy).
        rest = uri.split("://", 1)[1]
        uri = rest[rest.index("/") :] if "/" in rest else ""
    end = len(uri)
    slashes = 0
    for index, char in enumerate(uri):
        if char == "/":
            slashes += 1
            if slashes == depth + 1:
                end = index
                break
        elif char == "?" and not whole:
            end = index
            break
    return uri[:end].encode()


def key_hash(key: bytes) -> int:
    """sdbm, then the avalanche modifier: the default of ``hash-type consistent``."""
    return full_hash(sdbm(key))


@dataclass(frozen=True)
class Server:
    name: str
    id: int
    weight: int = 1


def point(server: Server, j: int, layout: str = "2.6") -> int:
    """Where point ``j`` of ``server`` sits on the ring (see the module docstring)."""
    if layout == "2.6":
        return full_hash(server.id * SRV_EWGHT_RANGE + j)
    return full_hash((full_hash(server.id) + j) & MASK)


@dataclass
class Ring:
    """The active servers' points, sorted; ``lookup`` is ``chash_get_server_hash``."""

    servers: Sequence[Server]
    down: frozenset[str] = frozenset()
    layout: str = "2.6"
    _keys: list[int] = field(init=False, repr=False)
    _owners: list[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        points = sorted(
            (point(server, j, self.layout), server.name)
            for server in self.servers
            if server.name not in self.down
            for j in range(server.weight * BE_WEIGHT_SCALE)
        )
        self._keys = [key for key, _ in points]
        self._owners = [name for _, name in points]

    def without(self, *names: str) -> Ring:
        """The same ring once ``names`` are marked down (their points removed)."""
        return Ring(self.servers, self.down | frozenset(names), self.layout)

    def lookup(self, hash_value: int, avoid: str | None = None) -> str:
        if not self._keys:
            raise LookupError("no server is up")
        count = len(self._keys)
        following = bisect.bisect_left(self._keys, hash_value)  # eb32_lookup_ge
        nxt = following % count
        prev = (following - 1) % count
        dn = (self._keys[nxt] - hash_value) & MASK
        dp = (hash_value - self._keys[prev]) & MASK
        index = prev if dp <= dn else nxt
        for _ in range(count):  # a retry: walk on clockwise past the avoided server
            if self._owners[index] != avoid:
                return self._owners[index]
            index = (index + 1) % count
        return self._owners[index]

    def server_for(self, uri: str, depth: int = 3) -> str:
        return self.lookup(key_hash(uri_key(uri, depth)))

    def shares(self) -> dict[str, float]:
        """Fraction of the 32-bit hash space each server answers for."""
        share = {server.name: 0 for server in self.servers if server.name not in self.down}
        count = len(self._keys)
        for index in range(count):
            # The arc served by point i runs from the midpoint with its predecessor to the
            # midpoint with its successor (nearest-point rule).
            before = (self._keys[index] - self._keys[index - 1]) & MASK
            after = (self._keys[(index + 1) % count] - self._keys[index]) & MASK
            share[self._owners[index]] += (before + after) / 2 if count > 1 else MASK + 1
        return {name: value / (MASK + 1) for name, value in share.items()}


def map_based(servers: Sequence[Server], hash_value: int, down: Iterable[str] = ()) -> str:
    """``hash-type map-based`` for equal weights: ``hash % (number of servers up)``."""
    gone = set(down)
    up = [server.name for server in servers if server.name not in gone]
    return up[hash_value % len(up)]


def fleet(count: int, weight: int, prefix: str = "proxy-") -> list[Server]:
    """``count`` servers named ``proxy-0…``, ids 1…count: the reference config's naming."""
    return [Server(f"{prefix}{index}", index + 1, weight) for index in range(count)]


def study_path(uid: str, base_path: str = "/dicom-web") -> str:
    return f"{base_path}/studies/{uid}"


def depth_for(base_path: str) -> int:
    """``balance uri depth`` that ends the key after the study UID under ``base_path``.

    One level per slash: ``/dicom-web/studies/{uid}`` has 3, ``/pacs/dicom-web/…`` 4,
    a proxy served at the root (``--base-path /``, i.e. ``""``) 2.
    """
    return len([part for part in base_path.split("/") if part]) + 2
