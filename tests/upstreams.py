"""In-process upstreams that misbehave on cue, and a relay that counts what it forwards."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


@dataclass
class Relay:
    """Forwards to ``target``; counts requests per path; can rewrite Host or inject faults.

    ``faults`` maps a path substring to a list of statuses answered (and consumed) before
    the request is forwarded again.
    """

    target: str
    host: str | None = None
    counts: Counter[str] = field(default_factory=Counter)
    received: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    faults: dict[str, list[int]] = field(default_factory=dict)
    down: bool = False

    def app(self) -> web.Application:
        app = web.Application(client_max_size=0)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        app.cleanup_ctx.append(self._session)
        return app

    async def _session(self, app: web.Application) -> object:
        self.session = aiohttp.ClientSession(auto_decompress=False)
        yield
        await self.session.close()

    def total(self, needle: str = "") -> int:
        return sum(n for path, n in self.counts.items() if needle in path)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.counts[request.path_qs] += 1
        self.received.append((request.method, request.path_qs, dict(request.headers)))
        if self.down:
            raise web.HTTPServiceUnavailable()
        for needle, statuses in self.faults.items():
            if needle in request.path and statuses:
                return web.Response(status=statuses.pop(0), text="injected")
        return await self._forward(request)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        if self.host:
            headers["Host"] = self.host
        body = await request.read() if request.body_exists else None
        async with self.session.request(
            request.method, self.target + request.path_qs, headers=headers, data=body
        ) as upstream:
            out = web.StreamResponse(
                status=upstream.status,
                headers={k: v for k, v in upstream.headers.items() if k.lower() not in HOP},
            )
            await out.prepare(request)
            async for chunk in upstream.content.iter_chunked(65536):
                await out.write(chunk)
            await out.write_eof()
            return out


def misbehaving_app() -> web.Application:
    """Routes named for the fault they produce."""
    app = web.Application()

    async def stall(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(float(request.query.get("for", "5")))
        return web.Response(text="late")

    async def drop_length(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "100000"})
        response.content_type = "application/dicom"
        await response.prepare(request)
        await response.write(b"x" * 50000)
        assert request.transport is not None
        request.transport.close()
        return response

    async def drop_chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_type = "application/dicom"
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b"x" * 50000)
        assert request.transport is not None
        request.transport.close()
        return response

    async def unavailable(request: web.Request) -> web.StreamResponse:
        return web.Response(
            status=503, text="archive busy", headers={"Retry-After": "7"}, content_type="text/plain"
        )

    async def echo_headers(request: web.Request) -> web.StreamResponse:
        return web.json_response(dict(request.headers))

    async def location(request: web.Request) -> web.StreamResponse:
        base = "http://archive.internal:8042/dicom-web"
        return web.Response(
            status=201,
            headers={
                "Location": f"{base}/studies/1.2.3",
                "Content-Location": f"{base}/studies/1.2.3",
                "Warning": f'299 {base} "stored with warnings"',
            },
            body=f'<resources base="{base}/"/>'.encode(),
            content_type="application/vnd.sun.wadl+xml",
        )

    base = "/dicom-web/studies/1.2.3/series/4.5/instances/6.7"
    app.router.add_get(base + "/stall", stall)
    app.router.add_get("/dicom-web/studies/9.1/stall", stall)
    app.router.add_get(base + "/drop-length", drop_length)
    app.router.add_get(base + "/drop-chunked", drop_chunked)
    app.router.add_get("/dicom-web/studies/503", unavailable)
    app.router.add_route("*", "/dicom-web/echo", echo_headers)
    app.router.add_route("*", "/dicom-web/location", location)
    return app


class RawUpstream:
    """A hand-written HTTP/1.1 origin for framings aiohttp's server will not produce.

    ``mode`` picks the answer: ``full`` (Content-Length, whole body), ``short-length``
    (Content-Length, half the body, then close), ``short-chunked`` (chunked, no final
    chunk), ``close-complete`` / ``close-cut`` (close-delimited multipart with / without
    its closing boundary), ``stall`` (headers and half the body, then nothing), ``slow``
    (the whole body in ten pieces over a second).
    """

    BOUNDARY = "raw-boundary"

    def __init__(self, payload: bytes = b"D" * 200_000) -> None:
        self.payload = payload
        self.mode = "full"
        self.requests = 0
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def dicomweb(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicom-web"

    async def start(self) -> RawUpstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        for writer in self._writers:
            writer.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def multipart(self) -> bytes:
        return (
            f"--{self.BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + self.payload
            + f"\r\n--{self.BOUNDARY}--\r\n".encode()
        )

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        self.requests += 1
        body = self.multipart()
        content_type = f'multipart/related; type="application/dicom"; boundary={self.BOUNDARY}'
        head = f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n"
        half = len(body) // 2
        if self.mode == "slow":
            writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode())
            step = len(body) // 10 + 1
            for start in range(0, len(body), step):
                writer.write(body[start : start + step])
                await writer.drain()
                await asyncio.sleep(0.1)
        elif self.mode in {"full", "short-length", "stall"}:
            writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode())
            writer.write(body if self.mode == "full" else body[:half])
        elif self.mode == "short-chunked":
            writer.write(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode())
            writer.write(f"{half:x}\r\n".encode() + body[:half] + b"\r\n")
        else:
            writer.write(f"{head}Connection: close\r\n\r\n".encode())
            writer.write(body if self.mode == "close-complete" else body[:half])
        await writer.drain()
        if self.mode == "stall":
            await reader.read()  # until the peer goes away
        writer.close()
        self._writers.discard(writer)
