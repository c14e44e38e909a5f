"""The proxy as a process: ``--workers``, shared cache, graceful SIGTERM (SPEC sections 1-3)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from harness.net import free_port, wait_port
from tests.cache.test_cache import INSTANCE, WHOLE
from tests.fake_upstream import FakeUpstream
from tests.support import eventually_async, serve_process

SLOW = replace(WHOLE, pieces=10, pause=0.1)  # the instance over a second


async def start_proxy(
    fake: FakeUpstream, data_dir: Path, *extra: str
) -> tuple[subprocess.Popen[bytes], int]:
    fake.route("GET", INSTANCE, SLOW)
    port = free_port()
    process = serve_process(fake.dicomweb, data_dir, port, *extra)
    try:
        await wait_port(port)
    except RuntimeError:
        process.kill()
        raise
    return process, port


async def fetch(port: int) -> tuple[int, str, bytes]:
    # One session per request: separate connections, so the kernel spreads them
    # across the workers' SO_REUSEPORT sockets.
    url = f"http://127.0.0.1:{port}{INSTANCE}"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, response.headers.get("X-Cache", ""), await response.read()


async def test_two_workers_share_one_cache_and_one_fill(fake: FakeUpstream, tmp_path: Path) -> None:
    process, port = await start_proxy(fake, tmp_path / "data", "--workers", "2")
    try:
        results = await asyncio.gather(*(fetch(port) for _ in range(20)))
        assert {status for status, _, _ in results} == {200}
        assert {body for _, _, body in results} == {WHOLE.data}
        assert fake.count() == 1
        later = await asyncio.gather(*(fetch(port) for _ in range(10)))
        assert {cache for _, cache, _ in later} == {"HIT"}
        assert fake.count() == 1
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_sigterm_lets_in_flight_requests_finish(
    fake: FakeUpstream, tmp_path: Path, workers: str
) -> None:
    process, port = await start_proxy(fake, tmp_path / "data", "--workers", workers, "--no-cache")
    try:
        in_flight = asyncio.ensure_future(fetch(port))
        await eventually_async(
            fake.count, interval=0.02, message="the request did not reach the upstream"
        )
        assert not in_flight.done()  # premise: the answer is still coming
        process.send_signal(signal.SIGTERM)
        status, _, body = await in_flight
        assert status == 200 and body == WHOLE.data
        assert await asyncio.to_thread(process.wait, 30) == 0
    finally:
        process.kill()
