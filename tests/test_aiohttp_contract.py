"""The aiohttp internals the hit path relies on, by the name of the function in
proxy/internals.py that uses each (the only module that reaches past aiohttp's API).

aiohttp's version is pinned to the minor releases tested (pyproject.toml); an upgrade
that renames or changes one of these fails here, naming it, instead of turning hits
into 500s or garbled responses.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web, web_protocol

from proxy import internals, server
from proxy.cache import file_response
from tests.support import eventually_async

# -- the held head: internals.HeldHead, internals.take_head ----------------------------


async def test_take_head_takes_a_held_head_that_is_then_sent_by_hand(
    aiohttp_client: Callable[..., Any],
) -> None:
    """``HeldHead`` (``StreamResponse._send_headers_immediately = False``) leaves the
    serialised head in the writer ``prepare`` returns, a ``StreamWriter`` whose
    ``_headers_buf`` / ``_headers_written`` take_head reads and marks as sent; aiohttp
    must then not send it a second time."""
    taken: list[bytes | None] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        response = internals.HeldHead(status=200, headers={"X-Contract": "held"})
        response.content_length = 4
        writer = await response.prepare(request)
        head = internals.take_head(writer)
        taken.append(head)
        assert request.transport is not None and head is not None
        request.transport.write(head + b"body")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/", handler)
    client = await aiohttp_client(app)
    for _ in range(2):  # and the connection stays usable: nothing sent twice
        response = await client.get("/")
        assert (response.status, await response.read()) == (200, b"body")
        assert response.headers["X-Contract"] == "held"
    assert all(head and head.startswith(b"HTTP/1.1 200 OK\r\n") for head in taken)


def test_held_head_overrides_the_attribute_stream_responses_have() -> None:
    assert web.StreamResponse._send_headers_immediately is True
    assert internals.HeldHead._send_headers_immediately is False
    assert issubclass(file_response.StoredBody, internals.HeldHead)


def test_the_pinned_minor_versions() -> None:
    """Raise the pin in pyproject.toml only once this file passes on the new version."""
    major, minor = (int(part) for part in aiohttp.__version__.split(".")[:2])
    assert (3, 12) <= (major, minor) < (3, 15)


# -- the protocol: protocol_idle, keep_alive, closing, make_protocol ------------------


async def _ok(request: web.BaseRequest) -> web.Response:
    return web.Response(text="ok")


async def test_the_protocol_state_the_lane_reads_and_sets() -> None:
    """``protocol_idle`` reads ``RequestHandler._waiter`` / ``_messages``, ``keep_alive``
    pushes ``_next_keepalive_close_time`` on by ``_keepalive_timeout`` from
    ``_loop.time()``, ``closing`` reads ``_force_close``; ``make_protocol`` makes a
    protocol from ``Server._loop`` and ``_kwargs``, as ``web.Server.__call__`` does."""
    during: list[bool] = []

    async def handler(request: web.Request) -> web.Response:
        during.append(internals.protocol_idle(request.protocol))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", handler)
    runner = server.Runner(app, access_log=None, keepalive_timeout=30)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/") as response:
                assert await response.text() == "ok"
            (connection,) = runner._server._connections  # type: ignore[union-attr]
            assert type(connection) is server.Connection
            await eventually_async(lambda: internals.protocol_idle(connection))
            assert during == [False]  # a request in progress: not idle
            connection._next_keepalive_close_time = 0.0
            internals.keep_alive(connection)
            assert connection._next_keepalive_close_time > connection._loop.time() + 20
            assert not internals.closing(connection)
            connection.force_close()
            assert internals.closing(connection)
    finally:
        await runner.cleanup()
    params = inspect.signature(web_protocol.RequestHandler.shutdown).parameters
    assert "timeout" in params  # Connection.shutdown passes it on


async def test_sites_make_protocols_through_the_runners_server_property() -> None:
    """Runner overrides ``BaseRunner.server``; TCPSite must call it for each connection
    and the runner must shut its own ``_server`` down (not the property's)."""
    app = web.Application()
    app.router.add_get("/", _ok)
    runner = server.Runner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        url = f"http://127.0.0.1:{port}/"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            assert await response.text() == "ok"
            connections = runner._server._connections  # type: ignore[union-attr]
            assert [type(c) for c in connections] == [server.Connection]
    finally:
        await runner.cleanup()
