"""The proxy as a process: ``--workers``, shared cache, graceful SIGTERM (SPEC sections 1-3)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

import aiohttp
import pytest

from harness.net import free_port, wait_port
from tests.support import eventually_async, serve_process
from tests.upstreams import RawUpstream

INSTANCE = "/dicom-web/studies/1.2.3/series/4.5/instances/6.7"


async def start_proxy(
    raw: RawUpstream, data_dir: Path, *extra: str
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = serve_process(raw.dicomweb, data_dir, port, *extra)
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


async def test_two_workers_share_one_cache_and_one_fill(raw: RawUpstream, tmp_path: Path) -> None:
    raw.mode = "slow"
    process, port = await start_proxy(raw, tmp_path / "data", "--workers", "2")
    try:
        results = await asyncio.gather(*(fetch(port) for _ in range(20)))
        assert {status for status, _, _ in results} == {200}
        assert {body for _, _, body in results} == {raw.multipart()}
        assert raw.requests == 1
        later = await asyncio.gather(*(fetch(port) for _ in range(10)))
        assert {cache for _, cache, _ in later} == {"HIT"}
        assert raw.requests == 1
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_sigterm_lets_in_flight_requests_finish(
    raw: RawUpstream, tmp_path: Path, workers: str
) -> None:
    raw.mode = "slow"
    process, port = await start_proxy(raw, tmp_path / "data", "--workers", workers, "--no-cache")
    try:
        in_flight = asyncio.ensure_future(fetch(port))
        await eventually_async(
            lambda: raw.requests, interval=0.02, message="the request did not reach the upstream"
        )
        process.send_signal(signal.SIGTERM)
        status, _, body = await in_flight
        assert status == 200 and body == raw.multipart()
        assert await asyncio.to_thread(process.wait, 30) == 0
    finally:
        process.kill()
