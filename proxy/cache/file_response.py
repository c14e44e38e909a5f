"""Send a stored body with ``sendfile``, without aiohttp's FileResponse.

FileResponse would stat and open the file in the thread pool first; here the file is
already open (opening it is how a hit proves its body still exists), so a hit costs no
thread hop.  The body goes out with ``os.sendfile`` straight away while the socket takes
it (the transport has nothing buffered, so the order of bytes is kept), and only what
remains waits for ``loop.sendfile``, whose per-call drain-and-register dance costs more
than the copy it saves on a 512 KiB body.  Measured with wrk on 512 KiB hits: 2,100
req/s with headers and body joined into one write, 1,600 with ``loop.sendfile`` alone,
3,250 with headers then the body in its own write, 3,600-3,800 as here.

The status line and headers go out first with ``MSG_MORE`` (send(2)): the kernel holds
them and sends them in the same segments as the start of the body, instead of a small
segment of their own that wakes the client once more.  That took a 512 KiB hit from
344 to 308 us of the proxy's CPU (wrk -c16, medians of 4 rounds); ``TCP_CORK`` around
the same two calls costs two more system calls and measured slower than neither.

Bodies below :data:`JOIN_BELOW` are cheaper joined to their headers in one write (the
cache answers those with a plain ``web.Response``, as it does for the rewritten or
gzipped variants it holds in memory, :mod:`proxy.cache.variants`).

The handler that answers a hit sends the body (:meth:`StoredBody.send`), as handlers do
that stream; aiohttp then finds the response finished.  Taking the head from aiohttp's
writer and writing to the socket past the transport are :mod:`proxy.internals`'.
"""

from __future__ import annotations

import asyncio
from typing import BinaryIO

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from multidict import CIMultiDict

from proxy import internals

JOIN_BELOW = 64 * 1024


class StoredBody(internals.HeldHead):
    """``size`` bytes of a stored body from ``offset`` (all of it, or one byte range),
    sent from ``handle`` (then closed) by :meth:`send`."""

    def __init__(
        self,
        handle: BinaryIO,
        size: int,
        *,
        status: int,
        headers: CIMultiDict[str],
        offset: int = 0,
    ) -> None:
        super().__init__(status=status, headers=headers)
        self._handle = handle
        self._offset = offset
        self.content_length = size
        self.sent_directly = 0  # bytes sent past aiohttp's writer (the access log adds them)

    async def send(self, request: web.BaseRequest) -> None:
        """Head, body and end, then the file is closed (also when the client went away)."""
        try:
            writer = await self.prepare(request)
            if request.method != "HEAD" and self.content_length:
                await self._send_body(request, writer)
            await self.write_eof()  # sends the head itself when no body went out
        finally:
            self._handle.close()

    async def _send_body(
        self, request: web.BaseRequest, writer: AbstractStreamWriter | None
    ) -> None:
        size = self.content_length or 0
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("connection lost")
        try:
            self._send_head(transport, writer)
            offset = self._offset
            sent = internals.sendfile_now(transport, self._handle, offset, size)  # usually all
            if sent < size:
                await asyncio.get_running_loop().sendfile(
                    transport, self._handle, offset + sent, size - sent
                )
            self.sent_directly += size
        except NotImplementedError:  # e.g. TLS transports: copy in chunks
            self._handle.seek(self._offset)
            left = size
            while left and (chunk := self._handle.read(min(left, 256 * 1024))):
                left -= len(chunk)
                await self.write(chunk)
        except ConnectionError as exc:  # the client went away mid-body
            raise ConnectionResetError(str(exc)) from exc

    def _send_head(self, transport: asyncio.Transport, writer: AbstractStreamWriter | None) -> None:
        """The head with MSG_MORE when the socket is idle and TCP, else as aiohttp would."""
        sock = internals.socket_if_idle(transport)
        head = internals.take_head(writer) if sock and sock.family in internals.TCP else None
        if head is None:
            if writer is not None:
                writer.send_headers()
            return
        try:
            with internals.borrowed(sock) as real:
                sent = internals.send_more(real, head)
        except BlockingIOError:
            sent = 0
        if sent < len(head):
            transport.write(head[sent:])  # the transport sends the rest, in order
        self.sent_directly += len(head)
