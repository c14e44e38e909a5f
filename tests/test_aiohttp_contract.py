"""The aiohttp internals the hit path relies on (proxy/cache/stored.py, proxy/server.py),
by name.

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

from proxy import server
from proxy.cache import stored


class HeldHead(web.StreamResponse):
    _send_headers_immediately = False


async def test_a_prepared_head_is_held_taken_and_sent_by_hand(
    aiohttp_client: Callable[..., Any],
) -> None:
    """``StreamResponse._send_headers_immediately = False`` leaves the serialised head in
    ``StreamResponse._payload_writer``, a ``StreamWriter`` whose ``_headers_buf`` /
    ``_headers_written`` stored._take_head reads and marks as sent; aiohttp must then
    not send it a second time."""
    taken: list[bytes | None] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        response = HeldHead(status=200, headers={"X-Contract": "held"})
        response.content_length = 4
        await response.prepare(request)
        head = stored._take_head(response._payload_writer)
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


def test_stored_body_holds_its_head() -> None:
    assert stored.StoredBody._send_headers_immediately is False


def test_the_pinned_minor_versions() -> None:
    """Raise the pin in pyproject.toml only once this file passes on the new version."""
    major, minor = (int(part) for part in aiohttp.__version__.split(".")[:2])
    assert (3, 12) <= (major, minor) < (3, 15)


# -- proxy/server.py: the express lane in front of aiohttp's protocol -----------------


async def _ok(request: web.BaseRequest) -> web.Response:
    return web.Response(text="ok")


async def test_the_protocol_attributes_the_lane_reads_and_sets() -> None:
    """Connection reads ``RequestHandler._waiter`` / ``_messages`` (aiohttp is idle),
    pushes ``_next_keepalive_close_time`` on by ``_keepalive_timeout`` from
    ``_loop.time()``, and is made as ``web.Server.__call__`` makes a handler, from the
    server's ``_loop`` and ``_kwargs``."""
    slots = {
        name
        for cls in web_protocol.RequestHandler.__mro__
        for name in getattr(cls, "__slots__", ())
    }
    for name in (
        "_waiter",
        "_messages",
        "_keepalive_timeout",
        "_next_keepalive_close_time",
        "_loop",
        "_force_close",
    ):
        assert name in slots, name
    made = web.Server(_ok)
    assert hasattr(made, "_loop") and isinstance(made._kwargs, dict)
    params = inspect.signature(web_protocol.RequestHandler.shutdown).parameters
    assert "timeout" in params


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
