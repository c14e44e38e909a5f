"""The archive's doorway: a relay that counts requests *and bytes* per path.

``python -m bench.fleet.relay LISTEN_PORT TARGET_URL``.  ``GET /_fleet/counts`` answers
``{"METHOD path": [requests, body bytes]}``; ``DELETE /_fleet/counts`` resets.
``bench.counter`` counts requests only; the fleet figures need the bytes that crossed
(the proxies ask gzip for metadata, so the bytes are not the archive's file sizes).
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from bench.counter import HOP_BY_HOP

COUNTS = web.AppKey("counts", defaultdict[str, list[int]])
SESSION = web.AppKey("session", aiohttp.ClientSession)
TARGET = web.AppKey("target", str)


async def relay(request: web.Request) -> web.StreamResponse:
    tally = request.app[COUNTS][f"{request.method} {request.path}"]
    tally[0] += 1
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    body = request.content if request.can_read_body else None
    async with request.app[SESSION].request(
        request.method,
        request.app[TARGET] + request.path_qs,
        headers=headers,
        data=body,
        auto_decompress=False,
    ) as upstream:
        response = web.StreamResponse(status=upstream.status)
        for name, value in upstream.headers.items():
            if name.lower() not in HOP_BY_HOP:
                response.headers.add(name, value)
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        await response.prepare(request)
        async for chunk in upstream.content.iter_chunked(256 * 1024):
            tally[1] += len(chunk)
            await response.write(chunk)
        await response.write_eof()
        return response


async def counts(request: web.Request) -> web.Response:
    if request.method == "DELETE":
        request.app[COUNTS].clear()
    return web.json_response(dict(request.app[COUNTS]))


async def _session(app: web.Application) -> AsyncIterator[None]:
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    app[SESSION] = aiohttp.ClientSession(timeout=timeout, auto_decompress=False)
    yield
    await app[SESSION].close()


def make_app(target: str) -> web.Application:
    app = web.Application(client_max_size=0)
    app[COUNTS] = defaultdict(lambda: [0, 0])
    app[TARGET] = target.rstrip("/")
    app.cleanup_ctx.append(_session)
    app.router.add_route("GET", "/_fleet/counts", counts)
    app.router.add_route("DELETE", "/_fleet/counts", counts)
    app.router.add_route("*", "/{tail:.*}", relay)
    return app


if __name__ == "__main__":
    web.run_app(
        make_app(sys.argv[2]),
        host="127.0.0.1",
        port=int(sys.argv[1]),
        print=None,
        access_log=None,
    )
