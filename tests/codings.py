"""In-process origins that code their answers as real ones do, for
tests/dicomweb/test_content_coding.py.

- :class:`CannedArchive` answers QIDO-RS, study metadata and instance retrieves for any
  UIDs with canned bodies that carry its own URLs and a foreign host's (an archive behind
  a load balancer announces the balancer's name).  ``gzips="always"`` gzips everything,
  bulk data too, whatever the request asked for (a CDN or corporate gateway that
  compresses on the fly, chunked); ``"negotiated"`` gzips only QIDO and metadata answers
  and only when the request's ``Accept-Encoding`` names gzip (dcm4chee / Undertow).
- :class:`Gateway` stands in front of an archive and answers complete 200s that are not
  the representation asked for (a login page, a text/plain error) before it relays.
- :class:`RawCoded` frames gzip bodies by hand: close-delimited, cut short, corrupt.

The archive records the path, query and ``Accept-Encoding`` of every request, the
others count requests, so that tests assert on what the upstream received (STYLE
point 9).
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import json
from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from harness.dicomgen import make_instance

FOREIGN = "http://archive.internal:8042/dicom-web"
BOUNDARY = "canned-0123456789"
JSON = "application/dicom+json"
INSTANCE_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
# Enough instances for a study metadata document over 1 MiB: hits of it are rewritten
# while streamed from the file (proxy.cache.stored.SENDFILE_FROM), URLs across chunks.
INSTANCES = 3000
PIECE = 16 * 1024


def qido_body(study: str, own: str, foreign: str) -> bytes:
    """Two matches: one under the archive's own base URL, one under a balancer's."""
    matches = [
        {
            "0020000D": {"vr": "UI", "Value": [uid]},
            "00081190": {"vr": "UR", "Value": [f"{base}/studies/{uid}"]},
            "00201208": {"vr": "IS", "Value": [INSTANCES]},
        }
        for uid, base in ((study, own), (f"{study}.9", foreign))
    ]
    return json.dumps(matches).encode()


def metadata_body(study: str, own: str, foreign: str) -> bytes:
    """Study metadata: RetrieveURL and BulkDataURI of every instance, hosts alternating."""
    items = []
    for number in range(1, INSTANCES + 1):
        base = own if number % 2 else foreign
        url = f"{base}/studies/{study}/series/{study}.1/instances/{study}.1.{number}"
        items.append(
            {
                "0020000D": {"vr": "UI", "Value": [study]},
                "00080018": {"vr": "UI", "Value": [f"{study}.1.{number}"]},
                "00081190": {"vr": "UR", "Value": [url]},
                "7FE00010": {"vr": "OW", "BulkDataURI": f"{url}/bulk/7FE00010"},
            }
        )
    return json.dumps(items).encode()


@functools.lru_cache(maxsize=16)
def instance_body(study: str, series: str, sop: str) -> bytes:
    """One CT instance (256 x 256) as ``multipart/related; type="application/dicom"``."""
    data = make_instance(study, series, 1, rows=256, columns=256, sop_uid=sop)
    head = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


class CannedArchive:
    """Set :attr:`port` once served (the bodies name it, as an origin names itself)."""

    def __init__(self, gzips: str) -> None:
        if gzips not in {"always", "negotiated"}:
            raise ValueError(f"gzips must be always or negotiated, not {gzips!r}")
        self.gzips = gzips
        self.port = 0
        self.received: list[tuple[str, str | None]] = []  # (path and query, Accept-Encoding)

    @property
    def own(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicom-web"

    def accept_encodings(self, path_qs: str) -> list[str | None]:
        return [coding for path, coding in self.received if path == path_qs]

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/dicom-web/studies", self._qido)
        app.router.add_get("/dicom-web/studies/{study}/metadata", self._metadata)
        app.router.add_get(
            "/dicom-web/studies/{study}/series/{series}/instances/{sop}", self._instance
        )
        return app

    async def _qido(self, request: web.Request) -> web.StreamResponse:
        study = request.query.get("StudyInstanceUID", "1.2.3")
        return await self._answer(request, qido_body(study, self.own, FOREIGN), JSON, True)

    async def _metadata(self, request: web.Request) -> web.StreamResponse:
        study = request.match_info["study"]
        body = metadata_body(study, self.own, FOREIGN)
        location = f"{FOREIGN}/studies/{study}/metadata"
        return await self._answer(request, body, JSON, True, location)

    async def _instance(self, request: web.Request) -> web.StreamResponse:
        uids = request.match_info
        body = instance_body(uids["study"], uids["series"], uids["sop"])
        location = f"{self.own}{request.path.removeprefix('/dicom-web')}"
        return await self._answer(request, body, INSTANCE_TYPE, False, location)

    async def _answer(
        self,
        request: web.Request,
        body: bytes,
        content_type: str,
        textual: bool,
        location: str | None = None,
    ) -> web.StreamResponse:
        asked = request.headers.get("Accept-Encoding")
        self.received.append((request.path_qs, asked))
        headers = {"Content-Type": content_type}
        if location:
            headers["Content-Location"] = location
        if self.gzips == "always":
            return await _chunked_gzip(request, body, headers)
        if textual and "gzip" in (asked or "").lower():
            headers["Content-Encoding"] = "gzip"
            body = gzip.compress(body)
        return web.Response(body=body, headers=headers)


async def _chunked_gzip(
    request: web.Request, body: bytes, headers: dict[str, str]
) -> web.StreamResponse:
    """What a compressing CDN sends: gzip, chunked, no Content-Length."""
    response = web.StreamResponse(headers={**headers, "Content-Encoding": "gzip"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    coded = gzip.compress(body)
    for start in range(0, len(coded), PIECE):
        await response.write(coded[start : start + PIECE])
    await response.write_eof()
    return response


_RELAYED_REQUEST = ("Accept", "Accept-Encoding")
_RELAYED_RESPONSE = ("Content-Type", "Content-Encoding", "Content-Length")


class Gateway:
    """Answers each of :attr:`pages` (Content-Type, body) in turn, as complete 200s with
    an ETag, then relays to ``target`` (an origin such as Orthanc's root), passing
    ``Accept`` and ``Accept-Encoding`` on and ``Content-Encoding`` back."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.pages: list[tuple[str, bytes]] = []
        self.requests: Counter[str] = Counter()
        self._session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        app.cleanup_ctx.append(self._client)
        return app

    async def _client(self, app: web.Application) -> AsyncIterator[None]:
        self._session = aiohttp.ClientSession(
            auto_decompress=False, skip_auto_headers=("Accept-Encoding",)
        )
        yield
        await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests[request.path] += 1
        if self.pages:
            content_type, body = self.pages.pop(0)
            etag = f'"page-{self.requests[request.path]}"'
            return web.Response(body=body, headers={"Content-Type": content_type, "ETag": etag})
        return await self._relay(request)

    async def _relay(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None  # set by the cleanup context
        given = request.headers
        headers = {name: given[name] for name in _RELAYED_REQUEST if name in given}
        async with self._session.get(self.target + request.path_qs, headers=headers) as up:
            kept = {name: up.headers[name] for name in _RELAYED_RESPONSE if name in up.headers}
            response = web.StreamResponse(status=up.status, headers=kept)
            await response.prepare(request)
            async for chunk in up.content.iter_chunked(PIECE):
                await response.write(chunk)
            await response.write_eof()
            return response


class RawCoded:
    """A hand-written origin answering ``body`` gzipped, one request per connection.

    ``mode``: ``whole`` (close-delimited, every byte), ``cut`` (close-delimited, half
    the gzip bytes), ``bad-crc`` (Content-Length, the gzip trailer's CRC-32 wrong),
    ``corrupt`` (Content-Length, 64 bytes inside the deflate stream flipped).
    """

    def __init__(self, body: bytes, content_type: str) -> None:
        self.body = body
        self.content_type = content_type
        self.mode = "whole"
        self.requests = 0
        self.port = 0
        self.server: asyncio.AbstractServer | None = None

    @property
    def dicomweb(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicom-web"

    async def start(self) -> RawCoded:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def coded(self) -> bytes:
        whole = gzip.compress(self.body)
        if self.mode == "cut":
            return whole[: len(whole) // 2]
        if self.mode == "bad-crc":
            crc = bytes(byte ^ 0xFF for byte in whole[-8:-4])
            return whole[:-8] + crc + whole[-4:]
        if self.mode == "corrupt":
            middle = len(whole) // 2
            flipped = bytes(byte ^ 0x55 for byte in whole[middle : middle + 64])
            return whole[:middle] + flipped + whole[middle + 64 :]
        return whole

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        self.requests += 1
        body = self.coded()
        framing = "" if self.mode in {"whole", "cut"} else f"Content-Length: {len(body)}\r\n"
        writer.write(
            f"HTTP/1.1 200 OK\r\nContent-Type: {self.content_type}\r\n"
            f"Content-Encoding: gzip\r\n{framing}Connection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()
