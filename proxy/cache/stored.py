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
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Iterator
from typing import Any, BinaryIO

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_writer import StreamWriter
from multidict import CIMultiDict

JOIN_BELOW = 64 * 1024


class StoredBody(web.StreamResponse):
    """``size`` bytes of a stored body from ``offset`` (all of it, or one byte range),
    sent from ``handle`` (then closed)."""

    # aiohttp keeps the serialised head in its writer until the first body write (as
    # it does for a web.Response), so that :meth:`_send_head` can send it with MSG_MORE.
    _send_headers_immediately = False

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

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        # Idempotent: the access log finishes responses, then aiohttp prepares again.
        if self.prepared:
            return None
        try:
            writer = await super().prepare(request)
            if request.method != "HEAD" and self.content_length:
                await self._send(request)
            await super().write_eof()  # sends the head itself when no body went out
            return writer
        finally:
            self._handle.close()

    async def _send(self, request: web.BaseRequest) -> None:
        size = self.content_length or 0
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("connection lost")
        try:
            self._send_head(transport)
            offset = self._offset
            sent = sendfile_now(transport, self._handle, offset, size)  # usually all of it
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

    def _send_head(self, transport: asyncio.Transport) -> None:
        """The head with MSG_MORE when the socket is idle and TCP, else as aiohttp would."""
        sock = socket_if_idle(transport)
        head = _take_head(self._payload_writer) if sock and sock.family in _TCP else None
        if head is None:
            if self._payload_writer is not None:
                self._payload_writer.send_headers()
            return
        try:
            sent = send_more(sock, head)
        except BlockingIOError:
            sent = 0
        if sent < len(head):
            transport.write(head[sent:])  # the transport sends the rest, in order
        self.sent_directly += len(head)


_TCP = (socket.AF_INET, socket.AF_INET6)


def _take_head(writer: AbstractStreamWriter | None) -> bytes | None:
    """The status line and headers aiohttp's writer holds, now marked as sent; None
    when it holds none.  (``StreamWriter._headers_buf``, aiohttp 3.12 and later.)"""
    if not isinstance(writer, StreamWriter):
        return None
    head = getattr(writer, "_headers_buf", None)
    if not isinstance(head, bytes) or getattr(writer, "_headers_written", True):
        return None
    writer._headers_buf = None
    writer._headers_written = True
    return head


def send_more(transport_socket: Any, data: bytes) -> int:
    """send(2) with MSG_MORE on a connection's socket."""
    with _borrowed(transport_socket) as sock:
        return sock.send(data, socket.MSG_MORE)


def send_now(transport_socket: Any, parts: list[bytes]) -> int:
    """sendmsg(2) of ``parts`` in one call (no joined copy); the bytes the socket took."""
    with _borrowed(transport_socket) as sock:
        try:
            return sock.sendmsg(parts)
        except BlockingIOError:
            return 0


@contextlib.contextmanager
def _borrowed(transport_socket: Any) -> Iterator[socket.socket]:
    """asyncio hands out a TransportSocket, which has no ``send``: a socket object
    around the same descriptor makes the call and is detached after, so the descriptor
    stays the transport's."""
    sock = socket.socket(
        transport_socket.family, transport_socket.type, 0, transport_socket.fileno()
    )
    try:
        yield sock
    finally:
        sock.detach()


def socket_if_idle(transport: asyncio.Transport) -> Any:
    """The connection's socket when bytes written to it go straight to the client: the
    transport holds nothing back (order) and encrypts nothing (TLS)."""
    if transport.get_write_buffer_size() or transport.get_extra_info("sslcontext"):
        return None
    return transport.get_extra_info("socket")


def sendfile_now(transport: asyncio.Transport, handle: BinaryIO, offset: int, size: int) -> int:
    """Bytes sent at once with ``os.sendfile`` while the socket takes them."""
    sock = socket_if_idle(transport)
    return 0 if sock is None else sendfile_on(sock, handle, offset, size)


def sendfile_on(sock: Any, handle: BinaryIO, offset: int, size: int) -> int:
    """:func:`sendfile_now` on a socket :func:`socket_if_idle` gave."""
    sent = 0
    try:
        while sent < size:
            count = os.sendfile(sock.fileno(), handle.fileno(), offset + sent, size - sent)
            if count == 0:
                break
            sent += count
    except BlockingIOError:
        pass
    return sent
