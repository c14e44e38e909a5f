"""The least a Python server can do of what the proxy does: reference rows beside it.

What the proxy costs per request above these is its own work; what these cost above
nginx is Python's, and no change to the proxy's code takes it away.

``python -m bench.floors hit PORT FILE HEAD``: an asyncio protocol that answers every
request with the bytes of ``FILE`` by ``sendfile`` after the response head in the file
``HEAD``.  It parses nothing but the end of the request head, and has no cache lookup,
freshness check, metrics or access log: the floor of a cache hit served from Python's
event loop.

``python -m bench.floors relay PORT ORIGIN``: a bare aiohttp relay that passes the
path and ``Accept`` to ``ORIGIN`` (a server's root URL), asks for identity, and streams
the answer back with its type and length.  No header cleaning, URL rewriting,
credentials, retries, metrics or log: the floor of a pass-through proxy built on
aiohttp's server and client.
"""

from __future__ import annotations

import asyncio
import os
import sys
import urllib.request
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import aiohttp
from aiohttp import web

END_OF_HEAD = b"\r\n\r\n"
NAME = "Python floor"  # its rows' name in the benchmark's results and report


class HitFloor(asyncio.Protocol):
    """Every request head, however it arrives, is answered with one head and one file."""

    def __init__(self, body: Path, head: bytes) -> None:
        self.body, self.head, self.size = str(body), head, body.stat().st_size
        self.pending = b""
        self.sending: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.fd = transport.get_extra_info("socket").fileno()

    def data_received(self, data: bytes) -> None:
        self.pending += data
        while self.sending is None and END_OF_HEAD in self.pending:
            self.pending = self.pending.partition(END_OF_HEAD)[2]
            self.answer()

    def answer(self) -> None:
        os.write(self.fd, self.head)  # a few hundred bytes, after the last answer went out
        file, sent = os.open(self.body, os.O_RDONLY), 0
        try:
            while sent < self.size:
                sent += os.sendfile(self.fd, file, sent, self.size - sent)
        except BlockingIOError:
            self.transport.pause_reading()  # the rest waits for the socket, as the proxy's
            self.sending = asyncio.get_running_loop().create_task(self._send_rest(sent))
        finally:
            os.close(file)

    async def _send_rest(self, offset: int) -> None:
        try:
            with open(self.body, "rb") as file:
                await asyncio.get_running_loop().sendfile(
                    self.transport, file, offset, self.size - offset
                )
        except (ConnectionError, OSError, RuntimeError):  # the client went away
            self.transport.abort()
            return
        self.sending = None
        self.transport.resume_reading()
        self.data_received(b"")


def hit_files(url: str, headers: Mapping[str, str], directory: Path) -> tuple[Path, Path]:
    """The answer ``url`` gives to ``headers`` (a warm cache's), as a body file and a head
    file for :class:`HitFloor`: the same bytes in the same coding."""
    with urllib.request.urlopen(urllib.request.Request(url, headers=dict(headers))) as answer:
        body, got = answer.read(), answer.headers
    kept = [f"{name}: {got[name]}" for name in ("Content-Type", "Content-Encoding") if name in got]
    head = ["HTTP/1.1 200 OK", *kept, f"Content-Length: {len(body)}", "", ""]
    (directory / "floor-body").write_bytes(body)
    (directory / "floor-head").write_bytes("\r\n".join(head).encode())
    return directory / "floor-body", directory / "floor-head"


async def serve_hits(port: int, body: Path, head: bytes) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: HitFloor(body, head), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


SESSION = web.AppKey("session", aiohttp.ClientSession)


def relay_app(origin: str) -> web.Application:
    async def session(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0)
        app[SESSION] = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        yield
        await app[SESSION].close()

    async def handle(request: web.Request) -> web.StreamResponse:
        headers = {"Accept": request.headers.get("Accept", "*/*"), "Accept-Encoding": "identity"}
        async with request.app[SESSION].get(origin + request.path_qs, headers=headers) as got:
            response = web.StreamResponse(status=got.status)
            for name in ("Content-Type", "Content-Length"):
                if name in got.headers:
                    response.headers[name] = got.headers[name]
            await response.prepare(request)
            async for chunk in got.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application()
    app.cleanup_ctx.append(session)
    app.router.add_get("/{path:.*}", handle)
    return app


def main() -> None:
    kind, port = sys.argv[1], int(sys.argv[2])
    if kind == "hit":
        body, head = Path(sys.argv[3]), Path(sys.argv[4]).read_bytes()
        asyncio.run(serve_hits(port, body, head))
    else:
        app = relay_app(sys.argv[3])
        web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
