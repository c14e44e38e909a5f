"""Chaos machinery: a faulty upstream, a mixed workload, and the invariants checked after.

:class:`FaultyUpstream` is an in-process aiohttp relay in front of a real Orthanc that,
with a seeded RNG, resets connections, stalls past the proxy's timeout, answers 5xx and
429, truncates bodies in every HTTP framing (Content-Length, chunked, close-delimited)
and restarts (stops listening, drops every connection, comes back on the same port).
Everything stays on loopback; the run is bounded in time and in requests.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from harness.dicomgen import Study, make_study
from proxy.dicomweb.media import parse_media_type
from proxy.dicomweb.multipart import MultipartReader, boundary_of
from proxy.errors import MalformedBody

HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "authorization"}
DICOM = 'multipart/related; type="application/dicom"'
FAULTS = {
    # kind: probability per request
    "reset": 0.04,
    "stall": 0.03,
    "5xx": 0.07,
    "429": 0.04,
    "truncate-length": 0.04,
    "truncate-chunked": 0.04,
    "truncate-close": 0.04,
    "reset-after-store": 0.03,  # STOW only: Orthanc stored it, the answer is lost
}


@dataclass
class FaultyUpstream:
    target: str  # Orthanc's root, e.g. http://127.0.0.1:8042
    seed: int
    expected_auth: str
    stall_seconds: float = 1.5
    enabled: bool = True
    injected: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    rejected_auth: int = 0
    port: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._transports: set[asyncio.Transport] = set()

    @property
    def dicomweb(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicom-web"

    async def start(self) -> FaultyUpstream:
        app = web.Application(client_max_size=0)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.session = aiohttp.ClientSession(auto_decompress=False)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        await self._listen()
        return self

    async def _listen(self) -> None:
        self.site = web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True)
        await self.site.start()
        server = self.site._server
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]

    async def restart(self, down_for: float) -> None:
        """Stop listening, drop every open connection, come back after ``down_for``."""
        self.injected["restart"] += 1
        await self.site.stop()
        for transport in list(self._transports):
            transport.abort()
        await asyncio.sleep(down_for)
        await self._listen()

    async def restarts(self, every: float, until: asyncio.Event) -> None:
        while not until.is_set():
            await asyncio.sleep(self.rng.uniform(every / 2, every * 1.5))
            if self.enabled and not until.is_set():
                await self.restart(self.rng.uniform(0.2, 0.8))

    async def stop(self) -> None:
        await self.session.close()
        await self.runner.cleanup()

    def _fault(self, method: str) -> str | None:
        if not self.enabled:
            return None
        roll = self.rng.random()
        for kind, probability in FAULTS.items():
            if kind == "reset-after-store" and method != "POST":
                continue
            if roll < probability:
                return kind
            roll -= probability
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        transport = request.transport
        assert transport is not None
        self._transports.add(transport)  # type: ignore[arg-type]
        if request.headers.get("Authorization") != self.expected_auth:
            self.rejected_auth += 1
            return web.Response(status=401, text="bad credentials")
        fault = self._fault(request.method)
        if fault is not None:
            self.injected[fault] += 1
        body = await request.read() if request.body_exists else None
        if fault == "reset":
            transport.abort()
            return web.Response()
        if fault == "stall":
            await asyncio.sleep(self.stall_seconds)
        if fault == "5xx":
            status = self.rng.choice([500, 502, 503, 504])
            return web.Response(status=status, text="injected failure")
        if fault == "429":
            return web.Response(status=429, text="slow down", headers={"Retry-After": "0"})
        status, headers, payload = await self._origin(request, body)
        if fault == "reset-after-store" or (fault or "").startswith("truncate"):
            return self._cut(transport, fault or "", status, headers, payload)
        return web.Response(status=status, headers=headers, body=payload)

    async def _origin(
        self, request: web.Request, body: bytes | None
    ) -> tuple[int, dict[str, str], bytes]:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        url = self.target + request.path_qs
        async with self.session.request(request.method, url, headers=headers, data=body) as up:
            kept = {k: v for k, v in up.headers.items() if k.lower() not in HOP}
            return up.status, kept, await up.read()

    def _cut(
        self,
        transport: asyncio.BaseTransport,
        fault: str,
        status: int,
        headers: dict[str, str],
        payload: bytes,
    ) -> web.StreamResponse:
        """Write the response by hand in the fault's framing, stop half-way, close."""
        assert isinstance(transport, asyncio.Transport)
        half = payload[: len(payload) // 2]
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head = f"HTTP/1.1 {status} X\r\n{lines}"
        if fault == "truncate-chunked":
            data = f"{head}Transfer-Encoding: chunked\r\n\r\n{len(half):x}\r\n".encode() + half
        elif fault == "truncate-close":
            data = f"{head}Connection: close\r\n\r\n".encode() + half
        else:  # truncate-length, reset-after-store
            data = f"{head}Content-Length: {len(payload)}\r\n\r\n".encode() + half
        transport.write(data)
        transport.close()
        return web.Response()


# -- the workload -------------------------------------------------------------------------


@dataclass
class Upload:
    study: Study
    status: int | None = None
    referenced: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    error: str = ""


@dataclass
class Workload:
    proxy: str  # the proxy's root URL
    studies: list[Study]  # already in the origin, for the viewers
    seed: int
    deadline: float
    max_requests: int
    sent: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    uploads: list[Upload] = field(default_factory=list)
    fetched: set[tuple[str, str]] = field(default_factory=set)  # (path, accept) of 200s
    violations: list[str] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)  # non-2xx bodies, for the secret check

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed + 1)

    @property
    def total(self) -> int:
        return sum(self.sent.values())

    def more(self) -> bool:
        return time.monotonic() < self.deadline and self.total < self.max_requests

    async def run(self, viewers: int, uploaders: int) -> None:
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            tasks = [self._viewer(session) for _ in range(viewers)]
            tasks += [self._uploader(session) for _ in range(uploaders)]
            await asyncio.gather(*tasks)

    async def _viewer(self, session: aiohttp.ClientSession) -> None:
        while self.more():
            study = self.rng.choice(self.studies)
            series_uid, sop_uid, _ = self.rng.choice(study.instances)
            base = f"/dicom-web/studies/{study.uid}"
            instance = f"{base}/series/{series_uid}/instances/{sop_uid}"
            kind, path, accept = self.rng.choice(
                [
                    ("study-metadata", f"{base}/metadata", "application/dicom+json"),
                    ("series-metadata", f"{base}/series/{series_uid}/metadata", "application/dicom+json"),
                    ("instance-metadata", f"{instance}/metadata", "application/dicom+json"),
                    ("instance", instance, DICOM),
                    ("instance", instance, DICOM),
                    ("qido", f"/dicom-web/studies?PatientName=Doe%5EJane&StudyInstanceUID={study.uid}", "application/dicom+json"),
                ]
            )  # fmt: skip
            await self._get(session, kind, path, accept)

    async def _get(self, session: aiohttp.ClientSession, kind: str, path: str, accept: str) -> None:
        self.sent[kind] += 1
        try:
            async with session.get(self.proxy + path, headers={"Accept": accept}) as response:
                body = await response.read()
                status, content_type = response.status, response.headers.get("Content-Type", "")
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.statuses[f"error:{type(exc).__name__}"] += 1
            return
        self.statuses[str(status)] += 1
        if status != 200:
            self.bodies.append(body)
            return
        problem = await complete(body, content_type)
        if problem:
            self.violations.append(f"{kind} {path}: 200 with {problem}")
        elif kind != "qido":
            self.fetched.add((path, accept))

    async def _uploader(self, session: aiohttp.ClientSession) -> None:
        while self.more():
            side = self.rng.choice([16, 32, 64, 128])
            study = make_study(
                self.rng.randint(1, 2), self.rng.randint(1, 4), rows=side, columns=side
            )
            upload = Upload(study)
            self.uploads.append(upload)
            await self._post(session, upload)

    async def _post(self, session: aiohttp.ClientSession, upload: Upload) -> None:
        self.sent["stow"] += 1
        boundary = f"chaos-{self.rng.getrandbits(64):x}"
        body = (
            b"".join(
                f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
                for _, _, data in upload.study.instances
            )
            + f"--{boundary}--\r\n".encode()
        )
        headers = {
            "Content-Type": f"{DICOM}; boundary={boundary}",
            "Accept": "application/dicom+json",
        }
        try:
            async with session.post(
                self.proxy + "/dicom-web/studies", data=body, headers=headers
            ) as r:
                upload.status = r.status
                answer = await r.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            upload.error = type(exc).__name__
            self.statuses[f"stow-error:{upload.error}"] += 1
            return
        self.statuses[f"stow-{r.status}"] += 1
        try:
            document = json.loads(answer)
            upload.referenced = _uids(document, "00081199")
            upload.failed = _uids(document, "00081198")
        except (ValueError, AttributeError, KeyError, TypeError):
            self.bodies.append(answer)


def _uids(document: dict[str, Any], tag: str) -> set[str]:
    return {item["00081155"]["Value"][0] for item in document.get(tag, {}).get("Value", [])}


async def complete(body: bytes, content_type: str) -> str:
    """'' when a 200 body is whole; else what is wrong (a short body passed as complete)."""
    if "json" in content_type:
        try:
            json.loads(body)
        except ValueError:
            return "a JSON body that does not parse"
        return ""
    if content_type.startswith("multipart/"):

        async def once() -> AsyncIterator[bytes]:
            yield body

        try:
            reader = MultipartReader(once(), boundary_of(parse_media_type(content_type)))
            while await reader.next_part() is not None:
                while await reader.read():
                    pass
        except MalformedBody as exc:
            return f"a multipart body that is cut: {exc}"
    return ""


async def parts_of(body: bytes, content_type: str) -> list[bytes]:
    async def once() -> AsyncIterator[bytes]:
        yield body

    reader = MultipartReader(once(), boundary_of(parse_media_type(content_type)))
    parts = []
    while await reader.next_part() is not None:
        data = b""
        while chunk := await reader.read():
            data += chunk
        parts.append(data)
    return parts


def dead_lettered(data_dir: Path) -> set[str]:
    root = data_dir / "dead-letter"
    found = set()
    for record in root.glob("*/record.json") if root.exists() else []:
        found.add(json.loads(record.read_text())["sop_instance"])
    return found


def leftover_files(data_dir: Path) -> list[Path]:
    spool, tmp = data_dir / "spool", data_dir / "cache" / "tmp"
    return [p for root in (spool, tmp) if root.exists() for p in root.rglob("*") if p.is_file()]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0
