"""The listening side: aiohttp's server, with the express lane in front of its parser.

:class:`Connection` is aiohttp's own protocol (``RequestHandler``) with one step added:
a complete request the lane has learned (:mod:`proxy.cache.express`) is answered in
``data_received``, before aiohttp parses it; everything else goes to aiohttp unchanged.
The lane answers only while aiohttp is idle on the connection and at a message
boundary, so the order of answers and the framing stay aiohttp's:

1. aiohttp is waiting for a request (no request in progress or queued) and has sent
   all it wrote;
2. every byte aiohttp was given on this connection was one complete request without a
   body.  The first time it is given anything else (a body, two requests at once, part
   of one), the lane is off for the rest of the connection: only aiohttp's parser then
   knows where the next request begins.

An answer is sent with ``sendfile`` (or one write of bytes held in memory); what the
socket does not take at once waits for ``loop.sendfile``, with reading paused, and
aiohttp's graceful shutdown waits for it.  Each answer is counted, timed and logged as
aiohttp-served requests are (:func:`proxy.logs.account_express`).

What this needs of aiohttp's protocol beyond its public API (whether it is idle, its
keep-alive timer, how ``web.Server`` makes it) and the writes to the socket past the
transport are :mod:`proxy.internals`'.  :class:`Runner` overrides ``BaseRunner.server``,
which sites call for each connection (``tests/test_aiohttp_contract.py`` checks both).
"""

from __future__ import annotations

import asyncio
import functools
import signal
import socket
import time
from collections.abc import Callable
from typing import Any, BinaryIO

from aiohttp import web, web_protocol

from proxy import internals, logs
from proxy.cache.express import Answer, Lane
from proxy.exchange import new_request_id
from proxy.state import EXPRESS


class Connection(web_protocol.RequestHandler):
    """One client connection: aiohttp's protocol with the express lane in front."""

    __slots__ = ("_app", "_held", "_lane", "_remote", "_sending", "_sock")

    def __init__(self, server: web.Server, app: web.Application, **kwargs: Any) -> None:
        super().__init__(server, **kwargs)
        self._app = app
        self._lane: Lane | None = app.get(EXPRESS)
        self._remote: str | None = None
        self._sending: asyncio.Task[None] | None = None
        self._held = b""  # arrived while an answer was still being sent
        self._sock: socket.socket | None = None  # the lane's, on the transport's descriptor

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self._remote = str(peer[0]) if isinstance(peer, tuple) else None
        if self._lane is not None:
            self._sock = internals.own_socket(transport)
            if self._sock is None:
                self._lane = None  # sendfile cannot encrypt; bytes in order over TCP only

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._sock is not None:
            internals.disown(self._sock)
            self._sock = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._sending is not None:
            self._held += data
            return
        lane = self._lane
        if lane is None or not self._express(lane, data):
            super().data_received(data)

    def _express(self, lane: Lane, data: bytes) -> bool:
        """True when the lane answered ``data``; else it is aiohttp's (and the lane
        stays on only when ``data`` was one complete request without a body)."""
        found = lane.candidate(data)
        if found is None:
            self._lane = None
            return False
        if not internals.protocol_idle(self):  # e.g. finishing its last answer: it queues this
            return False
        answer = lane.find(found)
        transport, sock = self.transport, self._sock
        if answer is None or transport is None or sock is None:
            return False
        if transport.get_write_buffer_size():  # what the transport holds goes first
            return False
        request_id = found.request_id or new_request_id().encode()
        return self._answer(lane, answer, request_id, transport, sock)

    def _answer(
        self,
        lane: Lane,
        answer: Answer,
        request_id: bytes,
        transport: asyncio.Transport,
        sock: socket.socket,
    ) -> bool:
        started = time.perf_counter()
        head = lane.head(answer, request_id)
        internals.keep_alive(self)
        if answer.data is not None:
            lane.answered()  # before the first byte: whoever gets it may look at the count
            sent = internals.send_now(sock, [head, answer.data])
            if sent < len(head) + answer.size:
                transport.write((head + answer.data)[sent:])  # the transport sends the rest
            self._done(lane, answer, request_id, started, len(head))
            return True
        try:
            body = open(answer.body_path, "rb", buffering=0)  # noqa: SIM115 (closed when sent)
        except FileNotFoundError:  # evicted by another worker: aiohttp's to answer
            return False
        lane.answered()
        sent = 0
        if _send_head(transport, sock, head):
            sent = internals.sendfile_on(sock.fileno(), body, 0, answer.size)
        if sent == answer.size:
            body.close()
            self._done(lane, answer, request_id, started, len(head))
        else:
            self._sending = asyncio.get_running_loop().create_task(
                self._send_rest(lane, body, sent, answer, request_id, started, len(head))
            )
        return True

    async def _send_rest(
        self,
        lane: Lane,
        body: BinaryIO,
        offset: int,
        answer: Answer,
        request_id: bytes,
        started: float,
        head: int,
    ) -> None:
        """What the socket did not take at once: ``loop.sendfile`` lets the transport
        send what it holds first, and pauses reading meanwhile."""
        try:
            transport = self.transport
            if transport is None:
                return
            await asyncio.get_running_loop().sendfile(transport, body, offset, answer.size - offset)
            self._done(lane, answer, request_id, started, head)
        except (ConnectionError, OSError, RuntimeError):
            if self.transport is not None:
                self.transport.abort()
        finally:
            body.close()
            self._sending = None
            self._release_held()

    def _release_held(self) -> None:
        held, self._held = self._held, b""
        if held and not internals.closing(self):
            self.data_received(held)

    def _done(
        self, lane: Lane, answer: Answer, request_id: bytes, started: float, head: int
    ) -> None:
        internals.keep_alive(self)
        seconds = time.perf_counter() - started
        logs.account_express(self._app, answer, request_id.decode(), self._remote, seconds, head)

    async def shutdown(self, timeout: float | None = 15.0) -> None:
        """aiohttp's graceful shutdown, after the answer being sent is complete."""
        sending = self._sending
        if sending is not None:
            await asyncio.wait([sending], timeout=timeout)
        await super().shutdown(timeout)


def _send_head(transport: asyncio.Transport, sock: socket.socket, head: bytes) -> bool:
    """The head with MSG_MORE; True when it all went out (else the transport holds the
    rest, and sends it before anything written after)."""
    try:
        sent = internals.send_more(sock, head)
    except BlockingIOError:
        sent = 0
    if sent < len(head):
        transport.write(head[sent:])
    return sent == len(head)


class Runner(web.AppRunner):
    """aiohttp's AppRunner whose sites accept a :class:`Connection` for each client."""

    # Sites only call ``runner.server`` to make protocols; the runner itself uses its
    # own ``_server``, so a factory of Connections can stand in for aiohttp's Server.
    @property
    def server(self) -> Callable[[], Connection] | None:  # type: ignore[override]
        server = super().server
        if server is None:
            return None
        return functools.partial(_connection, server, self.app)


def _connection(server: web.Server, app: web.Application) -> Connection:
    """What ``web.Server.__call__`` makes, with the lane in front."""
    return internals.make_protocol(server, Connection, app)


def run(app: web.Application, host: str, port: int, *, reuse_port: bool, grace: float) -> None:
    """Serve ``app`` until SIGTERM or SIGINT, then shut down gracefully (as
    ``web.run_app`` does, with this module's connections)."""
    asyncio.run(_serve(app, host, port, reuse_port=reuse_port, grace=grace))


async def _serve(
    app: web.Application, host: str, port: int, *, reuse_port: bool, grace: float
) -> None:
    runner = Runner(app, shutdown_timeout=grace)  # the access logger: create_app's handler_args
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
