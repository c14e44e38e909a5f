"""The response towards the client: its head, and the relay of its body.

A :class:`Head` is how a response starts (status, headers cleaned and rewritten for the
public base, and what happens to the body on the way: URLs rewritten, gzipped);
:func:`relay` writes the body, rewriting as the head says, and cuts the client
connection when the upstream body breaks.  Used alike by pass-through forwarding, cache
fills and hits.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, Mapping
from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from proxy import headers as hdrs
from proxy.compression import compressible, should_compress
from proxy.dicomweb.media import multipart_boundary
from proxy.dicomweb.rewrite import PartHeadersRewriter, Rewriter, StreamRewriter, carries_urls
from proxy.errors import UpstreamError

Headers = CIMultiDict[str] | CIMultiDictProxy[str]
REWRITE = web.ResponseKey("rewrite", bool)
# The boundary of a multipart body whose part headers are rewritten on the way.
PARTS = web.ResponseKey("parts", str)


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
