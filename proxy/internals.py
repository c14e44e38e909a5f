"""Where the proxy reaches past aiohttp's and asyncio's public API: here, and only here.

Both uses are on the path of a cache hit, for its cost (docs/engineering/benchmark.md):

- :mod:`proxy.cache.file_response` sends a stored body's head with ``MSG_MORE`` ahead of the
  body's ``sendfile``: aiohttp keeps the serialised head in its writer
  (:class:`HeldHead`), and :func:`take_head` takes it from there;
- :mod:`proxy.server` answers repeated hits in aiohttp's own protocol before its parser
  (the express lane): it asks whether the protocol is idle (:func:`protocol_idle`),
  pushes its keep-alive timer on (:func:`keep_alive`), asks whether it is closing
  (:func:`closing`), and makes protocols as ``web.Server`` does (:func:`make_protocol`).

Both write to the connection's socket past the asyncio transport, only while the
transport holds nothing back and encrypts nothing (:func:`socket_if_idle`,
:func:`send_more`, :func:`send_now`, :func:`sendfile_on`); the lane keeps one socket
object per connection for it (:func:`own_socket`, :func:`disown`), a hit through aiohttp
borrows one for the call (:func:`borrowed`).

aiohttp's version is pinned to the minor releases tested (``pyproject.toml``);
``tests/test_aiohttp_contract.py`` fails naming the function here whose attributes
changed, instead of hits turning into 500s or garbled responses.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, TypeVar

from aiohttp import web, web_protocol
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_writer import StreamWriter

Protocol = TypeVar("Protocol", bound=web_protocol.RequestHandler)

# -- the held head (StreamResponse, StreamWriter) --------------------------------------


class HeldHead(web.StreamResponse):
    """A response whose serialised head aiohttp keeps in its writer until the first body
    write, as it does for a ``web.Response`` (``StreamResponse._send_headers_immediately``),
    so that :func:`take_head` can send it another way."""

    _send_headers_immediately = False


def take_head(writer: AbstractStreamWriter | None) -> bytes | None:
    """The status line and headers aiohttp's writer holds, now marked as sent; None
    when it holds none.  (``StreamWriter._headers_buf`` and ``_headers_written``,
    aiohttp 3.12 and later.)"""
    if not isinstance(writer, StreamWriter):
        return None
    head = getattr(writer, "_headers_buf", None)
    if not isinstance(head, bytes) or getattr(writer, "_headers_written", True):
        return None
    writer._headers_buf = None
    writer._headers_written = True
    return head


# -- the protocol (RequestHandler, Server) ---------------------------------------------


def protocol_idle(protocol: web_protocol.RequestHandler) -> bool:
    """aiohttp waits for the next request on this connection, with none queued
    (``RequestHandler._waiter``, ``_messages``)."""
    waiter = protocol._waiter
    return waiter is not None and not waiter.done() and not protocol._messages


def keep_alive(protocol: web_protocol.RequestHandler) -> None:
    """Push aiohttp's idle-connection timer on: the connection is in use
    (``_next_keepalive_close_time``, ``_keepalive_timeout``, ``_loop``)."""
    timeout = protocol._keepalive_timeout
    if timeout > 0:
        protocol._next_keepalive_close_time = protocol._loop.time() + timeout


def closing(protocol: web_protocol.RequestHandler) -> bool:
    """aiohttp has decided to close this connection (``_force_close``)."""
    return protocol._force_close


def make_protocol(server: web.Server, make: Callable[..., Protocol], *args: Any) -> Protocol:
    """What ``web.Server.__call__`` makes for a connection, made by ``make(server,
    *args, ...)`` (``Server._loop``, ``_kwargs``)."""
    return make(server, *args, loop=server._loop, **server._kwargs)


# -- the socket under the transport ----------------------------------------------------

TCP = (socket.AF_INET, socket.AF_INET6)


def socket_if_idle(transport: asyncio.Transport) -> Any:
    """The connection's socket when bytes written to it go straight to the client: the
    transport holds nothing back (order) and encrypts nothing (TLS)."""
    if transport.get_write_buffer_size() or transport.get_extra_info("sslcontext"):
        return None
    return transport.get_extra_info("socket")


def own_socket(transport: asyncio.BaseTransport) -> socket.socket | None:
    """A socket object on the connection's descriptor, kept for the connection's life
    (asyncio's TransportSocket has no ``send``); None unless the connection is TCP and
    unencrypted.  :func:`disown` it when the connection is lost: the descriptor stays
    the transport's to close, and a socket object collected later must not close a
    descriptor number that a newer connection may have by then."""
    if transport.get_extra_info("sslcontext") is not None:
        return None
    given = transport.get_extra_info("socket")
    if given is None or given.family not in TCP:
        return None
    return socket.socket(given.family, given.type, 0, given.fileno())


def disown(sock: socket.socket) -> None:
    sock.detach()


@contextlib.contextmanager
def borrowed(transport_socket: Any) -> Iterator[socket.socket]:
    """:func:`own_socket` for one call: detached after it."""
    sock = socket.socket(
        transport_socket.family, transport_socket.type, 0, transport_socket.fileno()
    )
    try:
        yield sock
    finally:
        sock.detach()


def send_more(sock: socket.socket, data: bytes) -> int:
    """send(2) with MSG_MORE."""
    return sock.send(data, socket.MSG_MORE)


def send_now(sock: socket.socket, parts: list[bytes]) -> int:
    """sendmsg(2) of ``parts`` in one call (no joined copy); the bytes the socket took."""
    try:
        return sock.sendmsg(parts)
    except BlockingIOError:
        return 0


def sendfile_now(transport: asyncio.Transport, handle: BinaryIO, offset: int, size: int) -> int:
    """Bytes sent at once with ``os.sendfile`` while the socket takes them."""
    sock = socket_if_idle(transport)
    return 0 if sock is None else sendfile_on(sock.fileno(), handle, offset, size)


def sendfile_on(out: int, handle: BinaryIO, offset: int, size: int) -> int:
    """:func:`sendfile_now` on the descriptor ``out`` of a socket that takes bytes now."""
    sent = 0
    try:
        while sent < size:
            count = os.sendfile(out, handle.fileno(), offset + sent, size - sent)
            if count == 0:
                break
            sent += count
    except BlockingIOError:
        pass
    return sent
