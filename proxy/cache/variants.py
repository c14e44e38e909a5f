"""Hit bodies as they are sent, made once per stored entry and kept in memory.

A stored body is the upstream's representation; a client may need it rewritten for the
public base it used (SPEC section 2: JSON and XML bodies, or the part headers of a
multipart body that name upstream URLs) and gzip-compressed because it accepts gzip.  Both
are done once per entry, public base and coding, then kept, as nginx's ``gzip_static``
serves a ``.gz`` made once: a metadata hit for a gzip-accepting client (every browser,
``requests``, dicomweb-client) costs no compression.  The variant for the public base of
the request that filled an entry is made right after the fill, so even the first hit
finds it.

Keyed by the stored file, which a refill never reuses, so a key never names two
different bodies.  Bounded by total bytes, least recently used first; bodies stored
larger than :data:`MAX_SOURCE` are not held and stay rewritten or compressed per hit
as they stream.  Variants of bodies above :data:`INLINE_BELOW` are made in a thread.

A gzip variant is another representation of the same resource, so its ``ETag`` is the
entry's marked weak (RFC 9110 section 8.8.1), as nginx marks the ETags it gzips.
"""

from __future__ import annotations

import asyncio
import gzip
from typing import BinaryIO

from proxy.cache.store import Hit, Store
from proxy.compression import compressible
from proxy.dicomweb.media import multipart_boundary
from proxy.dicomweb.rewrite import Rewriter
from proxy.lru import LRU

MAX_BYTES = 64 * 1024 * 1024
MAX_SOURCE = 16 * 1024 * 1024
INLINE_BELOW = 64 * 1024
# zlib's default: 26 KB of Orthanc study metadata in ~0.4 ms, to a fifteenth of its size.
GZIP_LEVEL = 6

VariantKey = tuple[str, str, bool]  # stored file, public base ("" when not rewritten), gzip


def weak(etag: str) -> str:
    return etag if etag.startswith("W/") else f"W/{etag}"


class Variants:
    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._bodies: LRU[VariantKey, bytes] = LRU(max_weight=max_bytes, weigh=len)
        self._making: dict[VariantKey, asyncio.Future[bytes | None]] = {}
        self.made = 0  # variants built so far (each once per key while kept)

    async def body(
        self, hit: Hit, handle: BinaryIO, rewriter: Rewriter, compress: bool
    ) -> bytes | None:
        """The body to send, from memory; made from ``handle`` the first time.  None
        when the stored body is too large to hold (the caller streams it)."""
        key = _key(hit, rewriter, compress)
        found = self._bodies.get(key)
        if found is not None:
            return found
        if hit.meta.size > MAX_SOURCE:
            return None
        making = self._making.get(key)
        if making is not None:  # single flight: one build per key however many hits
            return await asyncio.shield(making)
        return await self._make(key, hit, handle, rewriter, compress)

    async def prepare_gzip(self, store: Store, key: str, rewriter: Rewriter) -> None:
        """The gzip variant of a JSON/XML entry just filled, for the public base of the
        request that filled it: the first hit of a gzip-accepting client finds it made."""
        hit = store.get(key)
        if hit is None or not compressible(hit.meta.headers.get("Content-Type", "")):
            return
        handle = hit.open()
        if handle is not None:
            with handle:
                await self.body(hit, handle, rewriter, compress=True)

    async def _make(
        self, key: VariantKey, hit: Hit, handle: BinaryIO, rewriter: Rewriter, compress: bool
    ) -> bytes | None:
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._making[key] = future
        data: bytes | None = None
        try:
            if hit.meta.size < INLINE_BELOW:
                data = _build(hit, handle, rewriter, compress)
            else:
                data = await asyncio.to_thread(_build, hit, handle, rewriter, compress)
            self._put(key, data)
            return data
        finally:
            del self._making[key]
            future.set_result(data)

    def _put(self, key: VariantKey, data: bytes) -> None:
        self.made += 1
        if len(data) > self.max_bytes // 8:
            return
        self._bodies.put(key, data)


def _key(hit: Hit, rewriter: Rewriter, compress: bool) -> VariantKey:
    rewritten = hit.meta.rewrite or hit.meta.part_urls
    return (str(hit.path), rewriter.public_base if rewritten else "", compress)


def _build(hit: Hit, handle: BinaryIO, rewriter: Rewriter, compress: bool) -> bytes:
    handle.seek(0)
    data = handle.read()
    if hit.meta.rewrite:
        data = rewriter.rewrite_bytes(data)
    elif hit.meta.part_urls:
        boundary = multipart_boundary(hit.meta.headers.get("Content-Type", "")) or ""
        data = rewriter.rewrite_part_headers(data, boundary)
    if compress:
        # mtime=0: the same entry always compresses to the same bytes.
        data = gzip.compress(data, GZIP_LEVEL, mtime=0)
    return data
