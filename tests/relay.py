"""A counting STOW-RS relay: an in-process aiohttp app between the proxy and Orthanc.

It records every request it receives (path, headers, parts) and can misbehave on cue:
answer 503 for the first N requests or always, 413 above N parts, or answer every
STOW itself (for representations Orthanc does not accept, such as dicom+json).
Runs in its own thread and loop, like the proxy under test, so synchronous clients work.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from harness.net import free_port
from proxy.dicomweb.media import parse_media_type
from proxy.dicomweb.multipart import MultipartReader, boundary_of

CT = "1.2.840.10008.5.1.4.1.1.2"


@dataclass
class Part:
    headers: dict[str, str]
    body: bytes


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    parts: list[Part]
    length: int
    status: int = 0


@dataclass
class Faults:
    fail_first: int = 0  # answer 503 to this many requests first
    fail_always: bool = False  # answer 503 to every request
    max_parts: int | None = None  # answer 413 above this many parts
    answer_locally: bool = False  # do not forward; answer a success for every part
    unreadable_200: bool = False  # forward, then answer 200 with a body no one can read


@dataclass
class Relay:
    upstream: str  # Orthanc's DICOMweb base
    faults: Faults = field(default_factory=Faults)
    received: list[Received] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    in_flight: int = 0
    max_in_flight: int = 0

    @property
    def dicomweb(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicom-web"

    @property
    def stow_requests(self) -> list[Received]:
        return [r for r in self.received if r.headers.get("Content-Type", "").startswith("multi")]

    def start(self) -> Relay:
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("relay did not start")
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application(client_max_size=0)
        app.cleanup_ctx.append(self._session)
        app.router.add_route("*", "/dicom-web/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())
        self._loop.close()

    async def _session(self, app: web.Application) -> AsyncIterator[None]:
        self.session = aiohttp.ClientSession(auto_decompress=False)
        yield
        await self.session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._record(request)
        finally:
            self.in_flight -= 1

    async def _record(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        record = Received(
            request.path, dict(request.headers), await _parts(request, body), len(body)
        )
        self.received.append(record)
        response = await self._respond(request, record, body)
        record.status = response.status
        return response

    async def _respond(self, request: web.Request, record: Received, body: bytes) -> web.Response:
        faults = self.faults
        number = len(self.received)
        if faults.fail_always or number <= faults.fail_first:
            return web.Response(status=503, text="busy", headers={"Retry-After": "0"})
        if faults.max_parts is not None and len(record.parts) > faults.max_parts:
            return web.Response(status=413, text="too many parts")
        if faults.answer_locally:
            return web.json_response(_success(record), content_type="application/dicom+json")
        url = self.upstream + request.path.removeprefix("/dicom-web")
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in {"host", "transfer-encoding"}
        }
        async with self.session.request(request.method, url, data=body, headers=headers) as up:
            data = await up.read()
            if faults.unreadable_200 and up.status == 200:
                # A gateway that replaces the archive's answer (seen: an HTML page).
                return web.Response(text="<html>stored</html>", content_type="text/html")
            headers = {
                "Content-Type": up.headers.get("Content-Type", "application/octet-stream"),
                "Warning": '299 relay "relayed"',
            }
            if "Content-Encoding" in up.headers:  # the body is relayed as it came
                headers["Content-Encoding"] = up.headers["Content-Encoding"]
            return web.Response(status=up.status, body=data, headers=headers)


async def _parts(request: web.Request, body: bytes) -> list[Part]:
    media = parse_media_type(request.headers.get("Content-Type", ""))
    if media.main != "multipart/related":
        return []

    async def once() -> AsyncIterator[bytes]:
        yield body

    reader = MultipartReader(once(), boundary_of(media))
    parts = []
    while (headers := await reader.next_part()) is not None:
        data = b""
        while chunk := await reader.read():
            data += chunk
        parts.append(Part(headers, data))
    return parts


def _success(record: Received) -> dict[str, object]:
    """A 200 STOW response naming every instance of a dicom+json request."""
    items = []
    for part in record.parts:
        if part.headers.get("content-type") != "application/dicom+json":
            continue
        for item in json.loads(part.body):
            uid = item["00080018"]["Value"][0]
            items.append(
                {
                    "00081150": {"vr": "UI", "Value": [CT]},
                    "00081155": {"vr": "UI", "Value": [uid]},
                    "00081190": {"vr": "UR", "Value": [f"http://elsewhere/dicom-web/x/{uid}"]},
                }
            )
    return {"00081199": {"vr": "SQ", "Value": items}}
