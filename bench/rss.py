"""Peak RSS of the proxy while multi-GiB bodies stream through it (SPEC section 8).

``python -m bench.rss [--gib 2]``: starts a synthetic origin and the proxy as separate
processes, streams a study retrieve (cache on: filled to disk while streaming; and
``--no-cache``) and a STOW-sized POST through the proxy, and reports the proxy's peak
resident set size (``VmHWM``) for each run.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from harness.dicomgen import make_instance
from harness.net import free_port, wait_port

CHUNK = 1024 * 1024


def start(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


async def download(url: str) -> int:
    received = 0
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as response:
        response.raise_for_status()
        async for chunk in response.content.iter_chunked(CHUNK):
            received += len(chunk)
    return received


TEMPLATE_UID = "1.2.3.4.100000000000"
BOUNDARY = "rss-boundary"


def stow_parts(total: int) -> tuple[list[bytes], int]:
    """Enough 512x512 CT instances (about 512 KiB each) to make ``total`` bytes."""
    instance = make_instance("1.2.3", "1.2.3.1", 1, sop_uid=TEMPLATE_UID)
    head = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    part = head + instance + b"\r\n"
    return [part], max(1, total // len(part))


async def body(part: bytes, count: int) -> AsyncIterator[bytes]:
    """``count`` copies of ``part``, each with its own SOP Instance UID."""
    for number in range(1, count + 1):
        yield part.replace(TEMPLATE_UID.encode(), f"1.2.3.4.{100000000000 + number}".encode())
    yield f"--{BOUNDARY}--\r\n".encode()


async def upload(url: str, total: int) -> int:
    (part,), count = stow_parts(total)
    length = len(part) * count + len(f"--{BOUNDARY}--\r\n")
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
        "Content-Length": str(length),
        "Accept": "application/dicom+json",
    }
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(url, data=body(part, count), headers=headers) as response,
    ):
        stored = (await response.json(content_type=None)).get("00081199", {}).get("Value", [])
        if response.status != 200 or len(stored) != count:
            raise RuntimeError(f"STOW through the proxy: HTTP {response.status}")
        return length


async def run_case(name: str, origin: str, extra: list[str], gib: float) -> dict[str, object]:
    port = free_port()
    total = int(gib * 1024**3)
    with tempfile.TemporaryDirectory() as data_dir:
        proxy = start(
            [
                "proxy",
                "serve",
                "--upstream-url",
                origin,
                "--listen",
                f"127.0.0.1:{port}",
                "--data-dir",
                data_dir,
                *extra,
            ]
        )
        try:
            await wait_port(port)
            base = f"http://127.0.0.1:{port}/dicom-web"
            began = time.monotonic()
            if name.startswith("stow"):
                moved = await upload(f"{base}/studies", total)
            else:
                moved = await download(f"{base}/studies/1.2.3?bytes={total}")
            seconds = time.monotonic() - began
            return {
                "case": name,
                "GiB": round(moved / 1024**3, 2),
                "seconds": round(seconds, 1),
                "MiB/s": round(moved / 1024**2 / seconds),
                "peak RSS MiB": round(peak_rss_mib(proxy.pid), 1),
            }
        finally:
            proxy.terminate()
            proxy.wait(30)


async def measure(gib: float) -> list[dict[str, object]]:
    """The three cases against one synthetic origin, in order."""
    port = free_port()
    origin = start(["bench.origin", str(port)])
    try:
        await wait_port(port)
        upstream = f"http://127.0.0.1:{port}/dicom-web"
        cases = [
            ("retrieve, cache filling", []),
            ("retrieve, --no-cache", ["--no-cache"]),
            ("stow, split into batches", ["--no-cache"]),
        ]
        return [await run_case(name, upstream, extra, gib) for name, extra in cases]
    finally:
        origin.terminate()
        origin.wait(30)


async def main(gib: float) -> None:
    for result in await measure(gib):
        print(result, flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gib", type=float, default=2.0)
    asyncio.run(main(parser.parse_args().gib))
