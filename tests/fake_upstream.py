"""One fake upstream archive, told how to misbehave, for the faults Orthanc cannot produce.

:class:`FakeUpstream` serves HTTP on a free 127.0.0.1 port in its own thread and event
loop (like the proxy under test, so synchronous clients and proxies in subprocesses reach
it too).  It records every request it receives (:class:`Received`, STYLE point 9: assert
on what the upstream received) and answers it from the last :meth:`~FakeUpstream.route`
added that matches; a request no route matches goes on to :attr:`~FakeUpstream.origin`
(a real archive such as Orthanc) when one is set, else gets a 404.

A route answers with an :class:`Answer` (data) or a small callable from the request
received to an answer, after the answers of its ``first`` list (503 then 200).  An answer
says what is sent and how it goes over the wire: late, in pieces, gzipped, chunked or
close-delimited, or cut after some bytes, the connection then closed or held open::

    fake.origin = orthanc.url
    fake.route("GET", "/dicom-web/studies/{study}/metadata", first=[Answer(503)])
    fake.route("GET", "/dicom-web/studies", Answer(body=b"[", framing="close"))
    fake.route("POST", "/dicom-web/studies", stow_success)
    ...
    assert fake.count("/metadata") == 2
"""

from __future__ import annotations

import asyncio
import gzip
import http
import inspect
import json
import re
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, Literal

import aiohttp
import pydicom
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, MultiDictProxy
from yarl import URL

from tests.support import eventually_async

DICOM_JSON = {"Content-Type": "application/dicom+json"}
# Not end to end (RFC 9110 section 7.6.1), or set again by whoever sends the message on.
_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailer", "transfer-encoding", "upgrade", "host", "content-length",
}  # fmt: skip


@dataclass(frozen=True)
class Answer:
    """What the fake sends for one request, and how."""

    status: int = 200
    body: bytes | str = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before anything is sent: a stall
    framing: Literal["length", "chunked", "close"] = "length"  # close: close-delimited
    pieces: int = 1  # the body in this many writes ...
    pause: float = 0.0  # ... this long apart: a slow link
    gzip: bool = False  # the body gzipped on the way out (a CDN that compresses all)
    drop_after: int | None = None  # body bytes sent before the connection is closed
    hang: bool = False  # after drop_after: send nothing more, close nothing
    reset: bool = False  # abort the connection instead of answering

    @property
    def data(self) -> bytes:
        return self.body.encode() if isinstance(self.body, str) else self.body


@dataclass
class Received:
    """One request as the fake received it, and what it answered."""

    method: str
    path: str  # decoded, without the query
    path_qs: str  # with the query, as it came on the wire
    headers: CIMultiDictProxy[str]
    body: bytes
    params: dict[str, str] = field(default_factory=dict)  # what a route's {name}s matched
    answer: Answer | None = None
    refused: str | None = None  # why the check refused it

    @property
    def status(self) -> int:
        return 0 if self.answer is None else self.answer.status

    @property
    def query(self) -> MultiDictProxy[str]:
        return URL(self.path_qs, encoded=True).query

    def parts(self) -> list[Part]:
        """The parts of a multipart/related body (RFC 2046 section 5.1.1), else []."""
        return multipart_parts(self.body, self.headers.get("Content-Type", ""))


@dataclass
class Part:
    headers: dict[str, str]  # names in lower case
    body: bytes


Respond = Callable[[Received], Answer | Awaitable[Answer]]
Check = Callable[[Received], str | None]  # None: admitted; else why it is refused


@dataclass
class Route:
    method: str  # or "*"
    path: str  # aiohttp's syntax: {name} is one segment, {name:regex} a regex
    answer: Answer | Respond | None  # None: forwarded to the origin
    first: list[Answer]  # answered (and used up) in turn before ``answer``

    def match(self, received: Received) -> dict[str, str] | None:
        if self.method not in ("*", received.method):
            return None
        found = _pattern(self.path).fullmatch(received.path)
        return None if found is None else found.groupdict()


class FakeUpstream:
    """Started by the ``fake`` fixture (tests/conftest.py), or ``with FakeUpstream() as
    fake:``.  ``check`` sees every request first; a refused one is answered ``refusal``
    with a JSON ``message`` (as the cloud archives answer)."""

    def __init__(self, *, origin: str | None = None, check: Check | None = None) -> None:
        self.origin = origin  # e.g. Orthanc's root URL; requests no route takes go there
        self.check = check
        self.refusal = 401
        self.routes: list[Route] = []
        self.received: list[Received] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.base_path = "/dicom-web"  # where its DICOMweb service is
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._session: aiohttp.ClientSession | None = None

    # -- configuring ---------------------------------------------------------------------

    def route(
        self,
        method: str,
        path: str,
        answer: Answer | Respond | None = None,
        *,
        first: list[Answer] | None = None,
    ) -> Route:
        """Answer requests for ``path``; added last, so it wins over earlier routes."""
        added = Route(method, path, answer, list(first or []))
        self.routes.append(added)
        return added

    # -- what it received ----------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return self.url + self.base_path

    def count(self, needle: str = "") -> int:
        """Requests whose path and query contain ``needle``."""
        return sum(1 for received in self.received if needle in received.path_qs)

    @property
    def paths(self) -> Counter[str]:
        """Requests per path (without the query)."""
        return Counter(received.path for received in self.received)

    @property
    def refused(self) -> list[str]:
        """Why ``check`` refused each request it refused."""
        return [received.refused for received in self.received if received.refused]

    # -- serving -------------------------------------------------------------------------

    def start(self) -> FakeUpstream:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._call(self._start())
        return self

    def stop(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._call(self._stop())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def restart(self, down_for: float) -> None:
        """As an archive restarting: drop every connection, refuse new ones for
        ``down_for`` seconds, then listen on the same port again."""
        self._call(self._restart(down_for))

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _call(self, coroutine: Coroutine[Any, Any, None]) -> None:
        assert self._loop is not None, "not started"
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30)

    async def _start(self) -> None:
        app = web.Application(client_max_size=0)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # A short shutdown: a handler still stalling or hanging is not waited for.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await self._listen()
        self._session = aiohttp.ClientSession(
            auto_decompress=False,  # relayed as the origin coded it
            skip_auto_headers=("Accept", "Accept-Encoding", "Content-Type", "User-Agent"),
        )

    async def _listen(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await self._site.start()
        self.port = self._runner.addresses[0][1]

    async def _restart(self, down_for: float) -> None:
        assert self._site is not None
        await self._site.stop()
        await self._drop_connections()
        await asyncio.sleep(down_for)
        await self._listen()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._drop_connections()
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _drop_connections(self) -> None:
        """Abort every connection: one still sending to a peer that does not read would
        otherwise outlive the loop."""
        assert self._runner is not None and self._runner.server is not None
        for connection in self._runner.server.connections:
            if connection.transport is not None:
                connection.transport.abort()
        await asyncio.sleep(0)  # the aborts close their sockets on the next turn

    # -- answering -----------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.read()
        except ConnectionResetError:
            return web.Response()  # the peer left before its body was in: no one to answer
        received = Received(request.method, request.path, request.path_qs, request.headers, body)
        self.received.append(received)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            received.answer = await self._answer(received)
            return await _send(request, received.answer)
        finally:
            self.in_flight -= 1

    async def _answer(self, received: Received) -> Answer:
        if self.check is not None and (why := self.check(received)) is not None:
            received.refused = why
            return self._refused(why)
        for route in reversed(self.routes):
            params = route.match(received)
            if params is None:
                continue
            received.params = params
            if route.first:
                return route.first.pop(0)
            if route.answer is None:
                return await self._onward(received)
            if isinstance(route.answer, Answer):
                return route.answer
            answer = route.answer(received)
            return await answer if inspect.isawaitable(answer) else answer
        return await self._onward(received)

    async def _onward(self, received: Received) -> Answer:
        if self.origin is None:
            return Answer(404, "no route, no origin")
        return await self.forward(received)

    def _refused(self, why: str) -> Answer:
        headers = {"Content-Type": "application/json"}
        if self.refusal == 401:  # a 401 carries a challenge (RFC 9110 section 11.6.1)
            headers["WWW-Authenticate"] = 'Bearer realm="upstream"'
        return Answer(self.refusal, json.dumps({"message": why}), headers)

    async def forward(self, received: Received, headers: Mapping[str, str] | None = None) -> Answer:
        """``received`` relayed to the origin, every end-to-end header on and back (and
        ``headers`` set on the way there); the answer framed as the origin framed it."""
        assert self._session is not None and self.origin is not None
        sent = CIMultiDict((k, v) for k, v in received.headers.items() if k.lower() not in _HOP)
        sent.update(headers or {})
        url = URL(self.origin.rstrip("/") + received.path_qs, encoded=True)
        async with self._session.request(
            received.method, url, headers=sent, data=received.body or None
        ) as origin:
            body = await origin.read()
            kept = {k: v for k, v in origin.headers.items() if k.lower() not in _HOP}
            chunked = "Content-Length" not in origin.headers
            return Answer(origin.status, body, kept, framing="chunked" if chunked else "length")


# -- over the wire --------------------------------------------------------------------------


async def _send(request: web.Request, answer: Answer) -> web.StreamResponse:
    await asyncio.sleep(answer.delay)
    body, headers = _coded(answer)
    if answer.reset or answer.framing == "close" or answer.drop_after is not None:
        return await _by_hand(request, answer, body, headers)
    if answer.framing == "length" and answer.pieces == 1:
        return web.Response(status=answer.status, body=body, headers=headers)
    response = web.StreamResponse(status=answer.status, headers=headers)
    if answer.framing == "chunked":
        response.enable_chunked_encoding()
    else:
        response.content_length = len(body)
    await response.prepare(request)
    for number, piece in enumerate(_pieces(body, answer.pieces)):
        await asyncio.sleep(answer.pause if number else 0)
        await response.write(piece)
    await response.write_eof()
    return response


async def _by_hand(
    request: web.Request, answer: Answer, body: bytes, headers: dict[str, str]
) -> web.StreamResponse:
    """aiohttp frames every answer it sends whole: a reset, a cut or a close-delimited
    answer is written on the transport by hand, and the connection ends it."""
    transport = request.transport
    assert transport is not None
    if answer.reset:
        transport.abort()
        return web.Response()  # never sent
    framing = {
        "length": f"Content-Length: {len(body)}",
        "chunked": "Transfer-Encoding: chunked",
        "close": "Connection: close",
    }[answer.framing]
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    transport.write(
        f"HTTP/1.1 {answer.status} {_reason(answer.status)}\r\n{lines}{framing}\r\n\r\n".encode()
    )
    sent = body if answer.drop_after is None else body[: answer.drop_after]
    chunked = answer.framing == "chunked"
    for number, piece in enumerate(_pieces(sent, answer.pieces)):
        await asyncio.sleep(answer.pause if number else 0)
        transport.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece)
    if answer.hang:
        await eventually_async(transport.is_closing, timeout=60, message="the peer never left")
    transport.close()
    return web.Response()  # never sent: the connection is closed


def _coded(answer: Answer) -> tuple[bytes, dict[str, str]]:
    headers = dict(answer.headers)
    if not answer.gzip:
        return answer.data, headers
    headers["Content-Encoding"] = "gzip"
    return gzip.compress(answer.data), headers


def _pieces(body: bytes, count: int) -> Iterator[bytes]:
    step = max(1, -(-len(body) // count))
    for start in range(0, len(body), step):
        yield body[start : start + step]


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


_PATTERNS: dict[str, re.Pattern[str]] = {}


def _pattern(path: str) -> re.Pattern[str]:
    """aiohttp's route syntax as a regex: ``{name}`` one segment, ``{name:regex}``."""
    if path not in _PATTERNS:
        regex, last = "", 0
        for found in re.finditer(r"\{(\w+)(?::([^}]*))?\}", path):
            regex += re.escape(path[last : found.start()])
            regex += f"(?P<{found.group(1)}>{found.group(2) or '[^/]+'})"
            last = found.end()
        _PATTERNS[path] = re.compile(regex + re.escape(path[last:]))
    return _PATTERNS[path]


# -- DICOMweb bodies ------------------------------------------------------------------------


def multipart_parts(body: bytes, content_type: str) -> list[Part]:
    """Split a whole multipart/related body; [] for any other content type."""
    if not content_type.lower().startswith("multipart/"):
        return []
    boundary = re.search(r'boundary="?([^";]+)"?', content_type)
    assert boundary is not None, content_type
    delimiter = b"\r\n--" + boundary.group(1).encode()
    pieces = (b"\r\n" + body).split(delimiter)
    parts = []
    for piece in pieces[1:]:
        if piece.startswith(b"--"):
            break
        head, _, data = piece.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        fields = (line.split(":", 1) for line in head.decode().split("\r\n") if ":" in line)
        parts.append(Part({k.strip().lower(): v.strip() for k, v in fields}, data))
    return parts


def multipart_answer(*bodies: bytes, boundary: str = "fake-boundary") -> Answer:
    """``multipart/related; type="application/dicom"``, as a WADO-RS retrieve answers."""
    data = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + body + b"\r\n"
        for body in bodies
    )
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return Answer(
        body=data + f"--{boundary}--\r\n".encode(), headers={"Content-Type": content_type}
    )


def stow_success(received: Received) -> Answer:
    """A 200 STOW-RS answer (PS3.18 Table 10.5.3-1) naming every instance of the parts,
    DICOM or DICOM JSON, as an archive that stored them all answers."""
    items = []
    for part in received.parts():
        if part.headers.get("content-type") == "application/dicom+json":
            found = [
                (item["00080016"]["Value"][0], item["00080018"]["Value"][0])
                for item in json.loads(part.body)
            ]
        elif part.headers.get("content-type") == "application/dicom":
            dataset = pydicom.dcmread(BytesIO(part.body), force=True)
            found = [(str(dataset.SOPClassUID), str(dataset.SOPInstanceUID))]
        else:
            found = []
        items += [
            {
                "00081150": {"vr": "UI", "Value": [sop_class]},
                "00081155": {"vr": "UI", "Value": [sop]},
            }
            for sop_class, sop in found
        ]
    document = {"00081199": {"vr": "SQ", "Value": items}}
    return Answer(body=json.dumps(document), headers=DICOM_JSON)
