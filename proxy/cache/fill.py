"""Fill while streaming: one upstream fetch, written to a temp file, tailed by readers.

A :class:`Fill` runs as its own task, so a slow or vanished client neither stalls nor
aborts it; every client asking for the same key meanwhile (single flight) reads the
temp file as it grows, starting from the first byte.  The fill sequence:

1. request the upstream; publish status and headers to the waiting readers;
2. append each chunk to ``tmp/<id>.part`` and wake the readers;
3. when the body ended, check it is complete (Content-Length matched by aiohttp,
   chunked terminator seen, for multipart the closing boundary seen);
4. hand the finished file to the committer (rename into the store) or delete it.

Nothing is ever renamed into the store before step 3, so no reader of the store can
see a truncated body, and a crash leaves only ``tmp/`` files, removed at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import BinaryIO

import aiohttp
from multidict import CIMultiDict

from proxy.dicomweb.media import parse_media_type
from proxy.errors import ProxyError, UpstreamInvalid
from proxy.upstream import CHUNK, iter_body

Opener = Callable[[], AbstractAsyncContextManager[aiohttp.ClientResponse]]
Committer = Callable[["Fill"], Awaitable[None]]


class Fill:
    """One upstream response streamed into ``temp_path``."""

    def __init__(self, temp_path: Path) -> None:
        self.temp_path = temp_path
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
        self._tail = b""

    async def run(self, open_response: Opener, commit: Committer) -> None:
        """Steps 1-4 of the module docstring; never raises (errors go to readers)."""
        try:
            async with open_response() as response:
                self.status = response.status
                self.headers = CIMultiDict(response.headers)
                self.headers_ready.set()
                await self._copy_body(response)
                self.complete = self._is_complete(response)
                if self.complete is None:
                    raise UpstreamInvalid("the multipart body ended before its closing boundary")
        except ProxyError as exc:
            self.error = exc
        except OSError as exc:  # the cache disk: full, or gone
            self.error = UpstreamInvalid(f"cache write failed: {exc.strerror}")
        finally:
            os.close(self._fd)
            self.done = True
            self.headers_ready.set()
            self._wake()
        await commit(self)

    async def _copy_body(self, response: aiohttp.ClientResponse) -> None:
        async for chunk in iter_body(response):
            view = memoryview(chunk)
            while view:
                view = view[os.write(self._fd, view) :]
            self.written += len(chunk)
            self._tail = (self._tail + chunk)[-256:]
            self._wake()

    def _is_complete(self, response: aiohttp.ClientResponse) -> bool | None:
        """Step 3.  A close-delimited body that stops early looks complete to HTTP, so
        only framed bodies (length or chunked) or multipart bodies whose closing
        boundary arrived (RFC 2046 section 5.1.1) are trusted.  None: known truncated."""
        length = response.headers.get("Content-Length")
        if length is not None and int(length) != self.written:
            return False
        main, params = parse_media_type(response.headers.get("Content-Type", ""))
        if main.startswith("multipart/"):
            boundary = params.get("boundary", "")
            return True if f"--{boundary}--".encode() in self._tail else None
        return length is not None or response.headers.get("Transfer-Encoding") == "chunked"

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

    def close(self) -> None:
        self._handle.close()

    async def chunks(self) -> AsyncIterator[bytes]:
        fill, offset = self._fill, 0
        try:
            while True:
                if offset < fill.written:
                    size = min(CHUNK, fill.written - offset)
                    chunk = os.pread(self._handle.fileno(), size, offset)
                    offset += len(chunk)
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
