"""The client's request body, streamed to the upstream and bounded (SPEC section 2).

Never read whole: the forwarder and the STOW spool each take it as an async iterator.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from proxy.errors import PayloadTooLarge, ProxyError, RequestTimeout
from proxy.state import SETTINGS
from proxy.upstream import CHUNK


def request_body(request: web.Request, max_body: int) -> ClientBody | None:
    """The client body as a stream, bounded by ``--max-body`` (413 beyond it)."""
    if not request.body_exists:
        return None
    if max_body and (request.content_length or 0) > max_body:
        raise PayloadTooLarge(f"the request body exceeds {max_body} bytes")
    return ClientBody(request, max_body)


class ClientBody:
    """The client's body, bounded in size and idle time.

    Idle-bounded: a client that pauses longer than ``--client-timeout`` mid-body (a
    slow-body attack, or a client gone without a FIN) gets 408, not a held slot.  The
    error is also kept in :attr:`error`: streamed to the upstream, it surfaces from the
    HTTP client as a broken upstream connection, and the client's fault must win.
    """

    def __init__(self, request: web.Request, max_body: int) -> None:
        self._request = request
        self._max_body = max_body
        self.error: ProxyError | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._bounded():
                yield chunk
        except ProxyError as exc:
            self.error = exc
            raise

    async def _bounded(self) -> AsyncIterator[bytes]:
        seen, max_body = 0, self._max_body
        idle = self._request.app[SETTINGS].client_timeout
        while True:
            try:
                async with asyncio.timeout(idle):
                    chunk = await self._request.content.read(CHUNK)
            except TimeoutError:
                raise RequestTimeout(f"no request body bytes for {idle or 0:g} s") from None
            if not chunk:
                return
            seen += len(chunk)
            if max_body and seen > max_body:
                raise PayloadTooLarge(f"the request body exceeds {max_body} bytes")
            yield chunk
