"""Viewers opening studies through the balancer, the way OHIF loads a study.

Each viewer is a browser: one connection pool of 6 per host, kept across the studies it
opens.  An open is the study metadata (``application/dicom+json``), then every instance
it lists, in instance-number order, 6 at a time.  Errors are counted, not raised: a
request that fails is what the fleet test is about when a replica stops.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiohttp

from bench.clients import CHROMIUM_ENCODING, OHIF_METADATA
from bench.data import INSTANCE_ACCEPT
from bench.viewer import instance_paths

INSTANCE = {"Accept": INSTANCE_ACCEPT, "Accept-Encoding": CHROMIUM_ENCODING}
PER_HOST = 6


@dataclass
class Answer:
    path: str
    status: int  # 0: no HTTP answer (connection error, truncated body)
    cache: str  # X-Cache, "" when absent
    served_by: str  # X-Served-By (the balancer's server name), "" when absent
    size: int
    sent: float = 0.0  # time.monotonic() as the request went out
    answered: float = 0.0  # ... and as its response head came back


@dataclass
class Open:
    """One study opened by one viewer."""

    index: int  # position in the trace
    study: str
    began: float
    seconds: float = 0.0
    answers: list[Answer] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return sum(1 for answer in self.answers if answer.status != 200)


async def _get(
    session: aiohttp.ClientSession, base: str, path: str, headers: dict[str, str]
) -> tuple[Answer, bytes]:
    sent = time.monotonic()
    try:
        async with session.get(base + path, headers=headers) as response:
            answered = time.monotonic()
            body = await response.read() if path.endswith("/metadata") else b""
            size = len(body)
            if not body:
                async for chunk in response.content.iter_chunked(256 * 1024):
                    size += len(chunk)
            answer = Answer(
                path,
                response.status,
                response.headers.get("X-Cache", ""),
                response.headers.get("X-Served-By", ""),
                size,
                sent,
                answered,
            )
            return answer, body
    except (TimeoutError, aiohttp.ClientError):
        return Answer(path, 0, "", "", 0, sent, time.monotonic()), b""


async def open_study(session: aiohttp.ClientSession, base: str, index: int, study: str) -> Open:
    record = Open(index, study, time.monotonic())
    answer, body = await _get(session, base, f"/studies/{study}/metadata", OHIF_METADATA)
    record.answers.append(answer)
    if answer.status == 200:
        gate = asyncio.Semaphore(PER_HOST)

        async def one(path: str) -> Answer:
            async with gate:
                return (await _get(session, base, path, INSTANCE))[0]

        record.answers += await asyncio.gather(
            *(one(p) for p in instance_paths(json.loads(body), study))
        )
    record.seconds = time.monotonic() - record.began
    return record


async def replay(
    base: str,
    studies: Sequence[str],
    *,
    viewers: int = 3,
    on_open: Callable[[int], None] | None = None,
    timeout: float = 600.0,
) -> list[Open]:
    """Open ``studies`` in trace order, ``viewers`` at a time; ``on_open(i)`` is called as
    open ``i`` starts (the fleet run stops a replica from there)."""
    queue = list(enumerate(studies))
    queue.reverse()
    done: list[Open] = []
    deadline = time.monotonic() + timeout

    async def viewer() -> None:
        connector = aiohttp.TCPConnector(limit_per_host=PER_HOST)
        client_timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
            while queue and time.monotonic() < deadline:
                index, study = queue.pop()
                if on_open is not None:
                    on_open(index)
                done.append(await open_study(session, base, index, study))

    await asyncio.gather(*(viewer() for _ in range(viewers)))
    if queue:
        raise TimeoutError(f"{len(queue)} opens left after {timeout} s")
    return sorted(done, key=lambda item: item.index)
