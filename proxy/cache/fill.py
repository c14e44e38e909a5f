"""Fill while streaming: one upstream fetch, written to a temp file, tailed by readers.

A :class:`Fill` runs as its own task, so a slow or vanished client neither stalls nor
aborts it; every client asking for the same key meanwhile (single flight) reads the
temp file as it grows, starting from the first byte.  The fill sequence:

0. register in the fills under way (:meth:`Fill.register`), before any await, so that
   concurrent misses for the key join it instead of asking the upstream again;
1. request the upstream; publish status and headers to the waiting readers;
2. append each chunk to ``tmp/<id>.part`` and wake the readers;
3. when the body ended, check it is complete (Content-Length matched by aiohttp,
   chunked terminator seen, for multipart the closing boundary seen:
   :func:`proxy.dicomweb.ending.multipart_end`);
4. the cache renames the finished file into the store, or not; then :meth:`Fill.finish`
   deletes what is left, leaves the registry and releases the cross-process lock.

Nothing is ever renamed into the store before step 3, so no reader of the store can
see a truncated body, and a crash leaves only ``tmp/`` files, removed at start-up.

When the cache disk fills up mid-body (ENOSPC), the fill *spills*: the rest of the body
goes to its readers through a small in-memory window instead of the file, at the pace
of the slowest reader, and is never committed.  The cache stops filling; the clients
still get every byte (SPEC section 3: a full disk never stops serving).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from proxy.cache.lock import KeyLocks
from proxy.dicomweb.ending import EndCheck, multipart_end
from proxy.dicomweb.media import multipart_boundary
from proxy.dicomweb.rewrite import PartURLs
from proxy.errors import ProxyError, UpstreamInvalid
from proxy.upstream import CHUNK, Upstream, body_headers, checks_its_end, iter_body

# Bytes a spilled fill may hold in memory ahead of its slowest reader.
SPILL_WINDOW = 4 * CHUNK
# A fill stores the whole representation, whatever part or condition the client asked
# for (answered from the entry once it is stored).
_CLIENT_CONDITIONS = (
    "Range",
    "If-Range",
    "If-None-Match",
    "If-Modified-Since",
    "If-Match",
    "If-Unmodified-Since",
)


class Fill:
    """One upstream response streamed into ``temp_path``."""

    def __init__(self, temp_path: Path, url_pattern: re.Pattern[bytes] | None = None) -> None:
        """``url_pattern`` matches upstream URLs: a multipart body whose part headers
        carry one is marked (:attr:`part_urls`), to be rewritten when served."""
        self.temp_path = temp_path
        self._url_pattern = url_pattern
        self.part_urls: PartURLs | None = None
        # Set once it is known whether the first part's headers name an upstream URL
        # (at once for a body that is not multipart): the relay decides on it.
        self.parts_judged = asyncio.Event()
        self.status = 0
        self.headers: CIMultiDict[str] = CIMultiDict()
        self.written = 0
        self.complete: bool | None = False
        self.error: ProxyError | None = None
        self.done = False
        self.headers_ready = asyncio.Event()
        self.finished = asyncio.Event()  # set once committed to the store or discarded
        self._progress = asyncio.Event()
        self._fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._end: EndCheck | None = None  # the multipart close delimiter, if judged
        # Spilling (disk full): bytes [0, on_disk) are in the file, the rest from
        # ``_memory_start`` in ``_memory``; readers report what they consumed.
        self.on_disk: int | None = None
        self._memory = bytearray()
        self._memory_start = 0
        # Weak: a reader dropped without close() must not be kept alive (and its file
        # open) by the fill it points back to.
        self._readers: weakref.WeakSet[FillReader] = weakref.WeakSet()
        self._consumed = asyncio.Event()
        self._registry: dict[str, Fill] = {}
        self._key = ""
        self._lock: int | None = None

    @property
    def spilled(self) -> bool:
        return self.on_disk is not None

    def register(self, fills: dict[str, Fill], key: str, lock: int | None) -> None:
        """Step 0: under way for ``key`` in ``fills``, holding ``lock`` (an fd, or None)
        until :meth:`finish`."""
        self._registry, self._key, self._lock = fills, key, lock
        fills[key] = self

    def finish(self) -> None:
        """After step 4: the temp file deleted (a no-op once the store adopted it), out of
        the registry, the lock released, waiters woken.  The registry is left only once
        the entry is in the store or discarded: a request arriving in between must find
        one or the other."""
        self.discard()
        del self._registry[self._key]
        KeyLocks.release(self._lock)
        self.finished.set()

    async def run(self, upstream: Upstream, url: URL, headers: CIMultiDict[str]) -> None:
        """Steps 1-3 of the module docstring: GET ``url`` for the whole representation
        (the client's range and conditions dropped).  Never raises: errors go to readers."""
        headers = headers.copy()
        for name in _CLIENT_CONDITIONS:
            headers.popall(name, None)
        try:
            async with upstream.request("GET", url, headers) as response:
                self.status = response.status
                self.headers = CIMultiDict(body_headers(response))
                self._end = multipart_end(self.headers)
                self._watch_part_headers()
                self.headers_ready.set()
                await self._copy_body(response)
                self.complete = self._is_complete(response) and not self.spilled
                if self.complete is None:
                    raise UpstreamInvalid("the multipart body ended before its closing boundary")
        except ProxyError as exc:
            self.error = exc
        except OSError as exc:  # the cache disk: full, or gone
            self.error = UpstreamInvalid(f"cache write failed: {exc.strerror}")
        finally:
            os.close(self._fd)
            self.done = True
            if self.part_urls is not None:
                self.part_urls.end()
            self.parts_judged.set()
            self.headers_ready.set()
            self._wake()

    def _watch_part_headers(self) -> None:
        boundary = multipart_boundary(self.headers.get("Content-Type", ""))
        if boundary and self._url_pattern is not None:
            self.part_urls = PartURLs(self._url_pattern, boundary)
        else:
            self.parts_judged.set()

    def _look_for_part_urls(self, chunk: bytes) -> None:
        if self.part_urls is not None:
            self.part_urls.feed(chunk)
            if self.part_urls.first is not None:
                self.parts_judged.set()

    async def _copy_body(self, response: aiohttp.ClientResponse) -> None:
        async for chunk in iter_body(response):
            self._look_for_part_urls(chunk)
            self._store(chunk)
            self.written += len(chunk)
            if self._end is not None:
                self._end.feed(chunk)
            self._wake()
            if self.spilled:
                await self._wait_for_readers()

    def _store(self, chunk: bytes) -> None:
        """To the file; once the disk is full, to the memory window."""
        view = memoryview(chunk)
        if not self.spilled:
            try:
                while view:
                    view = view[os.write(self._fd, view) :]
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                self.on_disk = self.written + len(chunk) - len(view)
                self._memory_start = self.on_disk
        self._memory += view

    async def _wait_for_readers(self) -> None:
        """Backpressure: hold the upstream until the slowest reader is within the window."""
        while True:
            if not self._readers:
                raise UpstreamInvalid("the cache disk is full and no client is left")
            self._trim()
            if len(self._memory) <= SPILL_WINDOW:
                return
            self._consumed.clear()
            await self._consumed.wait()

    def _trim(self) -> None:
        slowest = min(reader.offset for reader in self._readers)
        drop = min(max(0, slowest - self._memory_start), len(self._memory))
        del self._memory[:drop]
        self._memory_start += drop

    def read_at(self, fd: int, offset: int, size: int) -> bytes:
        """Up to ``size`` written bytes from ``offset``: from the file or the window."""
        if self.on_disk is None or offset < self.on_disk:
            end = self.written if self.on_disk is None else self.on_disk
            return os.pread(fd, min(size, end - offset), offset)
        start = offset - self._memory_start
        return bytes(self._memory[start : start + size])

    def attach(self, reader: FillReader) -> None:
        self._readers.add(reader)

    def consumed(self, reader: FillReader, *, closed: bool = False) -> None:
        if closed:
            self._readers.discard(reader)
        self._consumed.set()

    def _is_complete(self, response: aiohttp.ClientResponse) -> bool | None:
        """Step 3, on the body as stored (decoded from any coding).  A close-delimited
        body that stops early looks complete to HTTP, so only bodies whose end was
        checked (length, chunked framing, the end of a compressed stream) or multipart
        bodies whose closing boundary arrived (RFC 2046 section 5.1.1) are trusted; a
        body in a coding the proxy could not decode is not judged (and never stored).
        None: known truncated."""
        length = self.headers.get("Content-Length")  # absent when decoded
        if length is not None and int(length) != self.written:
            return False
        if self._end is not None:
            return True if self._end.whole() else None
        return checks_its_end(response)

    def _wake(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    def reader(self) -> FillReader:
        """A reader from the first byte.  The file is opened here, synchronously, so it
        stays readable even if the fill finishes (renaming or deleting it) first."""
        return FillReader(self, open(self.temp_path, "rb"))

    async def progress(self) -> None:
        await self._progress.wait()

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.temp_path.unlink()


class FillReader:
    """Tails a fill's temp file; raises the fill's error once the written bytes ran out."""

    def __init__(self, fill: Fill, handle: BinaryIO) -> None:
        self._fill = fill
        self._handle = handle
        self.offset = 0  # bytes handed out so far
        fill.attach(self)

    def close(self) -> None:
        self._handle.close()
        self._fill.consumed(self, closed=True)

    async def chunks(self) -> AsyncIterator[bytes]:
        fill = self._fill
        try:
            while True:
                if self.offset < fill.written:
                    size = min(CHUNK, fill.written - self.offset)
                    chunk = fill.read_at(self._handle.fileno(), self.offset, size)
                    self.offset += len(chunk)
                    fill.consumed(self)
                    yield chunk
                elif fill.done:
                    if fill.error is not None:
                        raise fill.error
                    return
                else:
                    await fill.progress()
        finally:
            self.close()


async def file_chunks(handle: BinaryIO) -> AsyncIterator[bytes]:
    """A stored body in chunks (for hits that must be rewritten on the way out)."""
    while chunk := handle.read(CHUNK):
        yield chunk
