"""A counting HTTP relay: forwards everything to an origin and counts what it forwarded.

``python -m bench.counter LISTEN_PORT TARGET_URL``.  ``GET /_bench/counts`` answers
``{"METHOD path": n}``; ``DELETE /_bench/counts`` resets.  Bodies stream both ways, so
it can sit in front of Orthanc while the proxy or nginx single-flights a burst of
misses, and the counts say how many requests reached the origin.
"""

from __future__ import annotations

import sys
from collections import Counter

import aiohttp
from aiohttp import web

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length"}
COUNTS = web.AppKey("counts", Counter[str])
SESSION = web.AppKey("session", aiohttp.ClientSession)
TARGET = web.AppKey("target", str)


async def relay(request: web.Request) -> web.StreamResponse:
    request.app[COUNTS][f"{request.method} {request.path}"] += 1
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
            await response.write(chunk)
        await response.write_eof()
        return response


async def counts(request: web.Request) -> web.Response:
    if request.method == "DELETE":
        request.app[COUNTS].clear()
    return web.json_response(dict(request.app[COUNTS]))


async def _session(app: web.Application):  # type: ignore[no-untyped-def]
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    app[SESSION] = aiohttp.ClientSession(timeout=timeout, auto_decompress=False)
    yield
    await app[SESSION].close()


def make_app(target: str) -> web.Application:
    app = web.Application(client_max_size=0)
    app[COUNTS] = Counter()
    app[TARGET] = target.rstrip("/")
    app.cleanup_ctx.append(_session)
    app.router.add_route("GET", "/_bench/counts", counts)
    app.router.add_route("DELETE", "/_bench/counts", counts)
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
