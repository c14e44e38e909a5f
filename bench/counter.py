"""A counting HTTP relay: forwards everything to an origin and counts what it forwarded.

``python -m bench.counter LISTEN_PORT TARGET_URL``.  ``GET /_bench/counts`` answers
``{"METHOD path": n}``, ``GET /_bench/tally`` ``{"METHOD path": [requests, body bytes
sent back]}`` (the fleet figures need the bytes: the proxies ask gzip for metadata, so
they are not the archive's file sizes); ``DELETE`` on either resets both.  Bodies stream
both ways, so it can sit in front of Orthanc while the proxy or nginx single-flights a
burst of misses, and the counts say how many requests reached the origin.
"""

from __future__ import annotations

import sys
from collections import Counter

import aiohttp
from aiohttp import web

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length"}
COUNTS = web.AppKey("counts", Counter[str])
BYTES = web.AppKey("bytes", Counter[str])
SESSION = web.AppKey("session", aiohttp.ClientSession)
TARGET = web.AppKey("target", str)


async def relay(request: web.Request) -> web.StreamResponse:
    name = f"{request.method} {request.path}"
    request.app[COUNTS][name] += 1
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
            request.app[BYTES][name] += len(chunk)
            await response.write(chunk)
        await response.write_eof()
        return response


async def counts(request: web.Request) -> web.Response:
    if request.method == "DELETE":
        request.app[COUNTS].clear()
        request.app[BYTES].clear()
    return web.json_response(dict(request.app[COUNTS]))


async def tally(request: web.Request) -> web.Response:
    found = {name: [count, request.app[BYTES][name]] for name, count in request.app[COUNTS].items()}
    if request.method == "DELETE":
        request.app[COUNTS].clear()
        request.app[BYTES].clear()
    return web.json_response(found)


async def _session(app: web.Application):  # type: ignore[no-untyped-def]
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    app[SESSION] = aiohttp.ClientSession(timeout=timeout, auto_decompress=False)
    yield
    await app[SESSION].close()


def make_app(target: str) -> web.Application:
    app = web.Application(client_max_size=0)
    app[COUNTS] = Counter()
    app[BYTES] = Counter()
    app[TARGET] = target.rstrip("/")
    app.cleanup_ctx.append(_session)
    app.router.add_route("GET", "/_bench/counts", counts)
    app.router.add_route("DELETE", "/_bench/counts", counts)
    app.router.add_route("GET", "/_bench/tally", tally)
    app.router.add_route("DELETE", "/_bench/tally", tally)
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
