"""Pass one request through to the upstream, uncached, and its response back.

Bodies are never read whole: the client body goes to the upstream as an async iterator
(:mod:`proxy.client_body`) and the response is relayed chunk by chunk, its URLs
rewritten on the way (:mod:`proxy.responses`; SPEC section 2).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

from aiohttp import web

from proxy.client_body import ClientBody, request_body
from proxy.dicomweb.media import multipart_boundary
from proxy.dicomweb.rewrite import PartURLs, Rewriter
from proxy.errors import UpstreamError
from proxy.exchange import Exchange
from proxy.responses import Headers, relay, start_response
from proxy.upstream import Once, Upstream, body_headers, iter_body


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
        request.method,
        exchange.upstream_url,
        exchange.upstream_headers,
        Once(body) if body is not None else None,
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
