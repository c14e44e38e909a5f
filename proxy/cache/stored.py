"""Send a stored body without going through aiohttp's FileResponse.

FileResponse would stat and open the file in the thread pool first; here the file is
already open (opening it is how a hit proves its body still exists), so a hit costs no
thread hop.  How the bytes go out depends on the size (measured with ``bench.profile``
and wrk on 512 KiB hits: 2,100 req/s with one joined write, 1,600 with sendfile, 3,250
with two writes):

- below :data:`JOIN_BELOW`: the cache answers with a plain ``web.Response`` (headers and
  body joined into one write; joining a small body costs less than a second syscall);
- below :data:`SENDFILE_FROM`: headers, then the body read from the page cache in one
  write (aiohttp would copy a large body once more to join it to the headers);
- from :data:`SENDFILE_FROM`: ``loop.sendfile``, whose per-call drain-and-register
  cost is small next to copying megabytes through Python.
"""

from __future__ import annotations

import asyncio
from typing import BinaryIO

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from multidict import CIMultiDict

JOIN_BELOW = 64 * 1024
SENDFILE_FROM = 1024 * 1024


class StoredBody(web.StreamResponse):
    """A complete stored body of ``size`` bytes, sent from ``handle`` (then closed)."""

    def __init__(
        self, handle: BinaryIO, size: int, *, status: int, headers: CIMultiDict[str]
    ) -> None:
        super().__init__(status=status, headers=headers)
        self._handle = handle
        self.content_length = size

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        # Idempotent: the access log finishes responses, then aiohttp prepares again.
        if self.prepared:
            return None
        try:
            writer = await super().prepare(request)
            if request.method != "HEAD" and self.content_length:
                await self._send(request)
            await super().write_eof()
            return writer
        finally:
            self._handle.close()

    async def _send(self, request: web.BaseRequest) -> None:
        size = self.content_length or 0
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("connection lost")
        try:
            if size < SENDFILE_FROM:
                await self.write(self._handle.read(size))
                return
            await asyncio.get_running_loop().sendfile(transport, self._handle, 0, size)
        except NotImplementedError:  # e.g. TLS transports: copy in chunks
            self._handle.seek(0)
            while chunk := self._handle.read(256 * 1024):
                await self.write(chunk)
        except ConnectionError as exc:  # the client went away mid-body
            raise ConnectionResetError(str(exc)) from exc
