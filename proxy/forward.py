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
from proxy.dicomweb.media import multipart_boundary, parse_media_type
from proxy.dicomweb.rewrite import (
    PartHeadersRewriter,
    PartURLs,
    Rewriter,
    StreamRewriter,
    carries_urls,
)
from proxy.errors import PayloadTooLarge, ProxyError, RequestTimeout, UpstreamError
from proxy.exchange import Exchange
from proxy.state import SETTINGS
from proxy.upstream import CHUNK, Upstream, body_headers, iter_body

Headers = CIMultiDict[str] | CIMultiDictProxy[str]
REWRITE = web.ResponseKey("rewrite", bool)
# The boundary of a multipart body whose part headers are rewritten on the way.
PARTS = web.ResponseKey("parts", str)


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
        headers = body_headers(response)
        chunks = iter_body(response)
        part_urls, chunks = await _judge_parts(headers, chunks, exchange.rewriter)
        client = start_response(
            request,
            response.status,
            headers,
            exchange.rewriter,
            request_id=exchange.request_id,
            x_cache=x_cache,
            part_urls=part_urls,
        )
        await client.prepare(request)
        await relay(request, client, chunks, exchange.rewriter)
        return client


# How far into a multipart body the first part's headers are looked for.
_FIRST_HEAD_WITHIN = 64 * 1024


async def _judge_parts(
    headers: Headers, chunks: AsyncIterator[bytes], rewriter: Rewriter
) -> tuple[bool, AsyncIterator[bytes]]:
    """Whether the part headers of a multipart body name upstream URLs, judged on the
    first part's before the response starts: a body that needs no rewriting keeps its
    ``Content-Length`` (the parts of one response come from one code path upstream)."""
    boundary = multipart_boundary(headers.get("Content-Type", ""))
    if boundary is None or "Content-Encoding" in headers:
        return False, chunks
    watch, seen, size = PartURLs(rewriter.pattern, boundary), [], 0
    async for chunk in chunks:
        seen.append(chunk)
        watch.feed(chunk)
        size += len(chunk)
        if watch.first is not None or size > _FIRST_HEAD_WITHIN:
            break
    return watch.first is True, _chain(seen, chunks)


async def _chain(first: list[bytes], rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        for chunk in first:
            yield chunk
        async for chunk in rest:
            yield chunk
    finally:
        if isinstance(rest, AsyncGenerator):
            await rest.aclose()


@dataclass(frozen=True)
class Head:
    """How a response to the client starts, but for its request id: status, cleaned and
    rewritten headers, and whether its body is rewritten (JSON/XML, or the part headers
    of a multipart body: ``parts`` is its boundary) or gzipped on the way.  Heads are
    shared between requests (:mod:`proxy.cache.heads`): responses copy ``headers``."""

    status: int
    headers: CIMultiDict[str]
    rewrite: bool
    compress: bool
    parts: str | None = None

    @property
    def changes_body(self) -> bool:
        return self.rewrite or self.compress or self.parts is not None

    def response(self, request_id: str) -> web.StreamResponse:
        response = web.StreamResponse(status=self.status, headers=self.headers)
        response.headers["X-Request-ID"] = request_id
        response[REWRITE] = self.rewrite
        if self.parts is not None:
            response[PARTS] = self.parts
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
    part_urls: bool = True,
) -> Head:
    """``part_urls``: whether the part headers of a multipart body may name upstream
    URLs (Orthanc's frames carry ``Content-Location``); for a body not seen yet, they may."""
    content_type = source.get("Content-Type", "")
    # A body in a coding the proxy could not decode goes as it came (SPEC section 2).
    coded = "Content-Encoding" in source
    rewrite = carries_urls(content_type) and not coded
    compress = should_compress(request, content_type, source)
    parts = multipart_boundary(content_type) if part_urls and not (rewrite or coded) else None
    changed = rewrite or compress or parts is not None
    headers = hdrs.client_response_headers(source, rewriter, keep_length=not changed)
    if compressible(content_type) and not coded:
        hdrs.add_vary(headers, "Accept-Encoding")
    if x_cache:
        headers["X-Cache"] = x_cache
    return Head(status, headers, rewrite, compress, parts)


def start_response(
    request: web.Request,
    status: int,
    source: Headers,
    rewriter: Rewriter,
    *,
    request_id: str,
    x_cache: str | None = None,
    part_urls: bool = True,
) -> web.StreamResponse:
    """A response with the upstream's status and cleaned, rewritten headers."""
    head = head_for(request, status, source, rewriter, x_cache=x_cache, part_urls=part_urls)
    return head.response(request_id)


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
    stream = _rewriting(response, rewriter)
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


def _rewriting(
    response: web.StreamResponse, rewriter: Rewriter
) -> StreamRewriter | PartHeadersRewriter | None:
    if response[REWRITE]:
        return rewriter.stream()
    boundary = response.get(PARTS)
    return rewriter.part_stream(boundary) if boundary else None


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
    multipart = parse_media_type(content_type).main.startswith("multipart/")
    return not multipart and carries_urls(content_type)
