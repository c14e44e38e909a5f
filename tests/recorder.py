"""An in-process relay in front of a real upstream that records what it was asked.

Tests put it between the proxy and Orthanc to assert on what the upstream received
(request counts per path, body bytes sent back), as STYLE point 9 asks.
"""

from __future__ import annotations

from collections import Counter

import aiohttp
from aiohttp import web
from yarl import URL

# Transparent for content coding: the proxy's Accept-Encoding goes on, the origin's
# Content-Encoding comes back with the body as it was sent.
_REQUEST_HEADERS = ("Accept", "Accept-Encoding", "Content-Type")
_RESPONSE_HEADERS = ("Content-Type", "Content-Encoding", "Content-Location", "Location")


class Recorder:
    """``app()`` relays every request to ``target`` (an origin such as Orthanc's root)."""

    def __init__(self, target: str) -> None:
        self.target = URL(target)
        self.paths: Counter[str] = Counter()
        self.body_bytes: Counter[str] = Counter()
        self._session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.relay)
        app.on_cleanup.append(self._close)
        return app

    async def _close(self, app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    async def relay(self, request: web.Request) -> web.StreamResponse:
        self.paths[request.path] += 1
        if self._session is None:
            self._session = aiohttp.ClientSession(
                auto_decompress=False, skip_auto_headers=("Accept-Encoding",)
            )
        given = request.headers
        headers = {name: given[name] for name in _REQUEST_HEADERS if name in given}
        url = URL(str(self.target) + request.raw_path, encoded=True)
        body = await request.read() if request.body_exists else None
        async with self._session.request(request.method, url, headers=headers, data=body) as up:
            kept = {name: up.headers[name] for name in _RESPONSE_HEADERS if name in up.headers}
            response = web.StreamResponse(status=up.status, headers=kept)
            await response.prepare(request)
            async for chunk in up.content.iter_chunked(64 * 1024):
                self.body_bytes[request.path] += len(chunk)
                await response.write(chunk)
            await response.write_eof()
            return response
