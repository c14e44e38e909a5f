"""Stream a request to the upstream and its response back, rewriting URLs on the way.

Bodies are never read whole: the request body is handed to the upstream as an async
iterator and the response is written chunk by chunk (SPEC section 2).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from proxy import headers as hdrs
from proxy.dicomweb.coding import accepts_gzip
from proxy.dicomweb.rewrite import Rewriter, carries_urls
from proxy.errors import PayloadTooLarge, ProxyError, RequestTimeout, UpstreamError
from proxy.exchange import Exchange
from proxy.upstream import CHUNK, Upstream, body_headers, iter_body

Headers = CIMultiDict[str] | CIMultiDictProxy[str]
REWRITE = web.ResponseKey("rewrite", bool)
# --client-timeout, set by create_app: how long a request body may pause.
CLIENT_TIMEOUT = web.AppKey("client_timeout", float)


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
        idle = self._request.app.get(CLIENT_TIMEOUT)
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


async def forward(
    request: web.Request,
    exchange: Exchange,
    upstream: Upstream,
    max_body: int,
    *,
    x_cache: str | None = None,
) -> web.StreamResponse:
    """Pass one request through, uncached (``x_cache`` says why, on cacheable ones)."""
    body = request_body(request, max_body)
    try:
        return await _exchange(request, exchange, upstream, body, x_cache)
    except UpstreamError:
        if body is not None and body.error is not None:
            raise body.error from None
        raise


async def _exchange(
    request: web.Request,
    exchange: Exchange,
    upstream: Upstream,
    body: ClientBody | None,
    x_cache: str | None,
) -> web.StreamResponse:
    async with upstream.request(
        request.method, exchange.upstream_url, exchange.upstream_headers, body
    ) as response:
        client = start_response(
            request,
            response.status,
            body_headers(response),
            exchange.rewriter,
            request_id=exchange.request_id,
            x_cache=x_cache,
        )
        await client.prepare(request)
        await relay(request, client, iter_body(response), exchange.rewriter)
        return client


@dataclass(frozen=True)
class Head:
    """How a response to the client starts, but for its request id: status, cleaned and
    rewritten headers, and whether its body is rewritten or gzipped on the way.  Heads
    are shared between requests (:mod:`proxy.cache.heads`): responses copy ``headers``."""

    status: int
    headers: CIMultiDict[str]
    rewrite: bool
    compress: bool

    def response(self, request_id: str) -> web.StreamResponse:
        response = web.StreamResponse(status=self.status, headers=self.headers)
        response.headers["X-Request-ID"] = request_id
        response[REWRITE] = self.rewrite
        if self.compress:
            response.enable_compression(web.ContentCoding.gzip)
        return response


def head_for(
    request: web.Request,
    status: int,
    source: Headers | Mapping[str, str],
    rewriter: Rewriter,
    *,
    x_cache: str | None = None,
) -> Head:
    content_type = source.get("Content-Type", "")
    # A body in a coding the proxy could not decode goes as it came (SPEC section 2).
    coded = "Content-Encoding" in source
    rewrite = carries_urls(content_type) and not coded
    compress = should_compress(request, content_type, source)
    headers = hdrs.client_response_headers(source, rewriter, keep_length=not (rewrite or compress))
    if compressible(content_type) and not coded:
        hdrs.add_vary(headers, "Accept-Encoding")
    if x_cache:
        headers["X-Cache"] = x_cache
    return Head(status, headers, rewrite, compress)


def start_response(
    request: web.Request,
    status: int,
    source: Headers,
    rewriter: Rewriter,
    *,
    request_id: str,
    x_cache: str | None = None,
) -> web.StreamResponse:
    """A response with the upstream's status and cleaned, rewritten headers."""
    return head_for(request, status, source, rewriter, x_cache=x_cache).response(request_id)


async def relay(
    request: web.Request,
    response: web.StreamResponse,
    chunks: AsyncIterable[bytes],
    rewriter: Rewriter,
) -> None:
    """Write ``chunks`` to the prepared response; on a broken upstream body, cut the
    client connection so the client sees an error rather than a short body presented
    as complete.  The source is closed however this ends (a client gone mid-body too),
    so the files and connections behind it are released now, not when it is collected."""
    stream = rewriter.stream() if response[REWRITE] else None
    source = aiter(chunks)
    try:
        async for chunk in source:
            await response.write(stream.feed(chunk) if stream else chunk)
        if stream:
            await response.write(stream.flush())
    except UpstreamError:
        abort(request)
        raise
    finally:
        if isinstance(source, AsyncGenerator):
            await source.aclose()
    await response.write_eof()


def abort(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()


def should_compress(
    request: web.Request, content_type: str, upstream: Headers | Mapping[str, str]
) -> bool:
    """gzip JSON and XML towards clients that accept it, unless the body is coded
    already (in a coding the proxy could not decode)."""
    if "Content-Encoding" in upstream or request.method == "HEAD":
        return False
    return compressible(content_type) and accepts_gzip(request.headers.get("Accept-Encoding"))


def compressible(content_type: str) -> bool:
    """JSON, XML and WADL answers; never multipart, images or DICOM bulk data."""
    main = content_type.split(";", 1)[0].strip().lower()
    return not main.startswith("multipart/") and any(w in main for w in ("json", "xml", "wadl"))
