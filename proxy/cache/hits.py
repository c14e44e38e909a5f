"""Answering from a stored entry (SPEC section 3, Serving hits).

How a hit goes out, cheapest first:

- ``If-None-Match`` matches: 304 with the validators;
- the body is sent as stored: ``sendfile`` from the file (:class:`StoredBody`), a byte
  range of it (:mod:`proxy.cache.partial`), or, below 64 KiB, one write with the head;
- the body must change for this client (upstream URLs rewritten for its public base,
  gzip for a client that accepts it): the variant made once and held in memory
  (:mod:`proxy.cache.variants`), or, above 16 MiB, rewritten and compressed as it
  streams.

Heads (status and headers) are built once per entry, public base, cache result and
coding (:mod:`proxy.cache.heads`); only the request id is added per request.
"""

from __future__ import annotations

from typing import BinaryIO

from aiohttp import web
from multidict import CIMultiDict

from proxy import compression, responses
from proxy.cache import partial
from proxy.cache.file_response import JOIN_BELOW, StoredBody
from proxy.cache.fill import file_chunks
from proxy.cache.heads import Heads
from proxy.cache.store import Hit, Meta, Store
from proxy.cache.variants import MAX_SOURCE, Variants, weak
from proxy.errors import RangeNotSatisfiable
from proxy.exchange import Exchange


class HitServer:
    """Serves stored entries."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.heads = Heads()
        self.variants = Variants()

    async def serve(
        self, request: web.Request, exchange: Exchange, hit: Hit, result: str
    ) -> web.StreamResponse | None:
        """From the file: sendfile when nothing must change, else rewritten on the way.
        None when the body is gone (evicted by another worker since it was looked up)."""
        body = hit.open()
        if body is None:
            self.store.forget(hit.key)
            return None
        return await self._serve_body(request, exchange, hit, body, result)

    async def _serve_body(
        self, request: web.Request, exchange: Exchange, hit: Hit, body: BinaryIO, result: str
    ) -> web.StreamResponse:
        meta = hit.meta
        head = self._head(request, exchange, hit, result)
        if _not_modified(request, meta.etag):
            body.close()
            return web.Response(status=304, headers=_validators(head, exchange.request_id))
        if head.changes_body:
            return await self._serve_variant(request, exchange, hit, head, body)
        try:
            ranges = partial.wanted(request, meta.etag, meta.size)
        except RangeNotSatisfiable:
            body.close()
            raise
        if ranges:
            headers = head.headers.copy()
            headers["X-Request-ID"] = exchange.request_id
            return await partial.send(request, hit, body, ranges, headers)
        if meta.size < JOIN_BELOW:
            with body:
                return _from_memory(head, exchange.request_id, body.read())
        response = StoredBody(body, meta.size, status=head.status, headers=head.headers)
        response.headers["X-Request-ID"] = exchange.request_id
        await response.send(request)
        return response

    async def _serve_variant(
        self,
        request: web.Request,
        exchange: Exchange,
        hit: Hit,
        head: responses.Head,
        body: BinaryIO,
    ) -> web.StreamResponse:
        """Rewritten and/or gzipped: the variant made once (:mod:`proxy.cache.variants`),
        or, for a body too large to hold, rewritten and compressed as it streams."""
        try:
            data = await self.variants.body(hit, body, exchange.rewriter, head.compress)
            if data is not None:
                return self._variant_response(request, exchange, hit, head, data)
            response = head.response(exchange.request_id)
            await response.prepare(request)
            if request.method != "HEAD":
                await responses.relay(request, response, file_chunks(body), exchange.rewriter)
        finally:
            body.close()
        await response.write_eof()
        return response

    def _variant_response(
        self, request: web.Request, exchange: Exchange, hit: Hit, head: responses.Head, data: bytes
    ) -> web.Response:
        """The whole variant, or byte ranges of an identity one."""
        ranges = None if head.compress else partial.wanted(request, hit.meta.etag, len(data))
        if not ranges:
            return _from_memory(head, exchange.request_id, data)
        headers = head.headers.copy()
        headers["X-Request-ID"] = exchange.request_id
        return partial.from_memory(data, ranges, headers)

    def _head(
        self, request: web.Request, exchange: Exchange, hit: Hit, result: str
    ) -> responses.Head:
        """The hit's status and headers, built once per entry, base, result and coding."""
        meta = hit.meta
        content_type = meta.headers.get("Content-Type", "")
        compress = compression.should_compress(request, content_type, meta.headers)
        key = (str(hit.path), exchange.rewriter.public_base, result, compress)
        head = self.heads.get(key)
        if head is None:
            headers = CIMultiDict(meta.headers)
            etag = weak(meta.etag) if compress else meta.etag
            headers.update({"ETag": etag, "Content-Length": str(meta.size)})
            if result == "stale":
                headers.add("Warning", '110 dicomweb-proxy "Response is Stale"')
            head = responses.head_for(
                request,
                meta.status,
                headers,
                exchange.rewriter,
                x_cache=result.upper(),
                part_urls=meta.part_urls,
            )
            if takes_ranges(head, meta):
                head.headers["Accept-Ranges"] = "bytes"
            self.heads.put(key, head)
        return head


def takes_ranges(head: responses.Head, meta: Meta) -> bool:
    """Sent as stored, or an identity variant held in memory (:mod:`proxy.cache.partial`)."""
    return not head.changes_body or (not head.compress and meta.size <= MAX_SOURCE)


def _from_memory(head: responses.Head, request_id: str, data: bytes) -> web.Response:
    """A small stored body, or a variant (rewritten, gzipped already): one write sends
    headers and body together."""
    headers = head.headers.copy()
    headers.popall("Content-Length", None)
    headers["X-Request-ID"] = request_id
    if head.compress:
        headers["Content-Encoding"] = "gzip"
    return web.Response(status=head.status, headers=headers, body=data)


def _not_modified(request: web.Request, etag: str) -> bool:
    """RFC 9110 section 13.1.2: weak comparison of If-None-Match."""
    given = request.headers.get("If-None-Match")
    if not given:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in given.split(",")}
    return "*" in tags or etag in tags


def _validators(head: responses.Head, request_id: str) -> dict[str, str]:
    names = ("ETag", "Vary", "X-Cache", "Via", "Cache-Control")
    found = {name: head.headers[name] for name in names if name in head.headers}
    return {**found, "X-Request-ID": request_id}
