"""Chaos machinery: a seeded fault plan for the fake upstream, a mixed workload, and the
invariants checked after.

:class:`Chaos` answers every request of the fake upstream (tests/fake_upstream.py)
relaying to a real Orthanc: from a seeded RNG it resets connections, stalls past the
proxy's timeout, answers 5xx and 429, truncates bodies in every HTTP framing
(Content-Length, chunked, close-delimited), loses the answer to a STOW Orthanc stored,
and restarts the fake (stops listening, drops every connection, comes back on the same
port).  Everything stays on loopback; the run is bounded in time and in requests.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp

from harness.dicomgen import Study, make_study
from proxy.dicomweb.media import parse_media_type
from proxy.dicomweb.multipart import MultipartReader, boundary_of
from proxy.errors import MalformedBody
from tests.fake_upstream import Answer, FakeUpstream, Received

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
# The framing each cut is sent in: half of what Orthanc answered, then the connection closes.
CUTS: dict[str, Any] = {
    "truncate-length": "length",
    "truncate-chunked": "chunked",
    "truncate-close": "close",
    "reset-after-store": "length",
}


@dataclass
class Chaos:
    """The answer to every request of ``fake``; ``enabled`` off, it only relays."""

    fake: FakeUpstream
    seed: int
    stall_seconds: float = 1.5
    enabled: bool = True
    injected: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    async def __call__(self, received: Received) -> Answer:
        fault = self._fault(received.method)
        if fault is not None:
            self.injected[fault] += 1
        if fault == "reset":
            return Answer(reset=True)
        if fault == "5xx":
            return Answer(self.rng.choice([500, 502, 503, 504]), "injected failure")
        if fault == "429":
            return Answer(429, "slow down", {"Retry-After": "0"})
        if fault == "stall":
            await asyncio.sleep(self.stall_seconds)  # then relayed, too late for the proxy
        answer = await self.fake.forward(received)
        if fault in CUTS:
            return replace(answer, framing=CUTS[fault], drop_after=len(answer.data) // 2)
        return answer

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

    async def restarts(self, every: float, until: asyncio.Event) -> None:
        """Restart the fake every ``every`` seconds or so, down 0.2 to 0.8 s each time."""
        while not until.is_set():
            await asyncio.sleep(self.rng.uniform(every / 2, every * 1.5))
            if self.enabled and not until.is_set():
                self.injected["restart"] += 1
                await asyncio.to_thread(self.fake.restart, self.rng.uniform(0.2, 0.8))


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
