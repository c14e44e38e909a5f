"""Partial responses from a stored body: 206 and 416 (RFC 9110 sections 14 and 15.3.7).

One range of a body sent as stored goes out with ``sendfile`` from the file
(:class:`StoredBody` at an offset); several go as ``multipart/byteranges`` (RFC 9110
section 14.6), read from the file a chunk at a time.  A rewritten variant held in
memory (:mod:`proxy.cache.variants`: its bytes are fixed per entry and public base)
is cut from memory.  A gzip variant, or a body too large to hold that is rewritten as
it streams, ignores ``Range`` and is sent whole (section 14.2 lets a server do so).
"""

from __future__ import annotations

from typing import BinaryIO

from aiohttp import web
from multidict import CIMultiDict

from proxy.cache.file_response import StoredBody
from proxy.cache.ranges import ByteRange, content_range, if_range_holds, requested
from proxy.cache.store import Hit
from proxy.dicomweb import multipart
from proxy.errors import RangeNotSatisfiable

READ_SIZE = 256 * 1024


def wanted(request: web.Request, etag: str, size: int) -> list[ByteRange] | None:
    """The ranges of a ``size``-byte body to answer with, or None to send it whole (no
    ``Range``, a HEAD, an ``If-Range`` for another representation, a header to ignore)."""
    header = request.headers.get("Range")
    if header is None or request.method != "GET":
        return None
    if not if_range_holds(request.headers.get("If-Range"), etag):
        return None
    ranges = requested(header, size)
    if ranges == []:
        raise RangeNotSatisfiable(
            f"no range of {header!r} lies within the {size} bytes",
            headers={"Content-Range": f"bytes */{size}"},
        )
    return ranges


def from_memory(data: bytes, ranges: list[ByteRange], headers: CIMultiDict[str]) -> web.Response:
    """206 with ``ranges`` of a body held in memory."""
    headers = headers.copy()
    headers.popall("Content-Length", None)
    size = len(data)
    if len(ranges) == 1:
        ((start, end),) = ranges
        headers["Content-Range"] = content_range((start, end), size)
        return web.Response(status=206, headers=headers, body=data[start : end + 1])
    boundary = multipart.new_boundary()
    part_type = headers.pop("Content-Type", "application/octet-stream")
    pieces = [
        _part_head(boundary, part_type, (start, end), size)
        + data[start : end + 1]
        + multipart.PART_END
        for start, end in ranges
    ]
    headers["Content-Type"] = f"multipart/byteranges; boundary={boundary}"
    return web.Response(
        status=206, headers=headers, body=b"".join(pieces) + multipart.closing(boundary)
    )


async def send(
    request: web.Request,
    hit: Hit,
    body: BinaryIO,
    ranges: list[ByteRange],
    headers: CIMultiDict[str],
) -> web.StreamResponse:
    """206 with ``ranges`` of the stored ``body`` (closed when done)."""
    headers = headers.copy()
    headers.popall("Content-Length", None)
    size = hit.meta.size
    if len(ranges) == 1:
        ((start, end),) = ranges
        headers["Content-Range"] = content_range((start, end), size)
        response = StoredBody(body, end - start + 1, status=206, headers=headers, offset=start)
        await response.send(request)
        return response
    with body:
        return await _several(request, body, ranges, size, headers)


async def _several(
    request: web.Request,
    body: BinaryIO,
    ranges: list[ByteRange],
    size: int,
    headers: CIMultiDict[str],
) -> web.StreamResponse:
    boundary = multipart.new_boundary()
    part_type = headers.pop("Content-Type", "application/octet-stream")
    heads = [_part_head(boundary, part_type, byte_range, size) for byte_range in ranges]
    closing = multipart.closing(boundary)
    total = sum(len(h) + end - start + 1 + 2 for h, (start, end) in zip(heads, ranges, strict=True))
    headers["Content-Type"] = f"multipart/byteranges; boundary={boundary}"
    response = web.StreamResponse(status=206, headers=headers)
    response.content_length = total + len(closing)
    await response.prepare(request)
    for head, (start, end) in zip(heads, ranges, strict=True):
        await response.write(head)
        await _copy(response, body, start, end - start + 1)
        await response.write(multipart.PART_END)
    await response.write(closing)
    await response.write_eof()
    return response


def _part_head(boundary: str, part_type: str, byte_range: ByteRange, size: int) -> bytes:
    return multipart.part_head(
        boundary, [("Content-Type", part_type), ("Content-Range", content_range(byte_range, size))]
    )


async def _copy(response: web.StreamResponse, body: BinaryIO, start: int, count: int) -> None:
    body.seek(start)
    while count > 0 and (chunk := body.read(min(count, READ_SIZE))):
        count -= len(chunk)
        await response.write(chunk)
