"""STOW-RS benchmark: one large upload split by the proxy vs the same body POSTed directly.

SPEC section 8: a 1 GiB STOW split into batches stores every instance at >= 0.9 x the
throughput of one direct POST, and the proxy's RSS stays under 200 MiB.

    .venv/bin/python -m bench.stow_bench [--size-mib 1024] [--max-instances 50]

Starts a throw-away Orthanc and the proxy (a separate process, ``--no-cache``), writes
the multipart body to a temporary file once, streams it to each, and prints times,
throughputs and the proxy's peak RSS (``VmHWM``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from pydicom.uid import generate_uid

from harness.dicomgen import make_instance
from harness.net import free_port
from harness.orthanc import Orthanc

BOUNDARY = "bench-boundary-5b1f0c"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def write_body(path: Path, size: int) -> int:
    """Instances of 512x512x16 bits (about 512 KiB each) until ``size`` bytes."""
    study, series = generate_uid(), generate_uid()
    template = make_instance(study, series, 1)
    sop = _sop_uid_of(template)
    count = 0
    with path.open("wb") as handle:
        while handle.tell() < size:
            # Same pixels, fresh SOP Instance UID of the same length: fast to generate.
            uid = generate_uid()[: len(sop)].ljust(len(sop), "1")
            data = template.replace(sop.encode(), uid.encode())
            handle.write(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode())
            handle.write(data + b"\r\n")
            count += 1
        handle.write(f"--{BOUNDARY}--\r\n".encode())
    return count


def _sop_uid_of(data: bytes) -> str:
    import io

    import pydicom

    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


async def upload(url: str, path: Path) -> tuple[int, float]:
    async def chunks() -> AsyncIterator[bytes]:
        with path.open("rb") as handle:
            while chunk := handle.read(1024 * 1024):
                yield chunk

    headers = {
        "Content-Type": CONTENT_TYPE,
        "Content-Length": str(path.stat().st_size),
        "Accept": "application/dicom+json",
    }
    timeout = aiohttp.ClientTimeout(total=None)
    started = time.perf_counter()
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(url + "/studies", data=chunks(), headers=headers) as response,
    ):
        await response.read()
        return response.status, time.perf_counter() - started


def start_proxy(
    upstream: str, workdir: Path, max_instances: int
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [
        sys.executable, "-m", "proxy", "serve", "--upstream-url", upstream,
        "--listen", f"127.0.0.1:{port}", "--data-dir", str(workdir / "proxy"), "--no-cache",
        "--stow-max-instances", str(max_instances), "--log-level", "debug",
    ]  # fmt: skip
    process = subprocess.Popen(command)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            import urllib.request

            urllib.request.urlopen(url + "/healthz", timeout=1).read()
            return process, url + "/dicom-web"
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("proxy did not start")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--max-instances", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stow-bench-") as temp:
        workdir = Path(temp)
        body = workdir / "body.multipart"
        count = write_body(body, args.size_mib * 1024 * 1024)
        size = body.stat().st_size
        print(f"body: {count} instances, {size / 2**20:.0f} MiB")
        orthanc = Orthanc(workdir / "orthanc").start()
        try:
            status, direct = asyncio.run(upload(orthanc.dicomweb, body))
            stored = orthanc.instance_count()
            rate = size / 2**20 / direct
            print(
                f"direct POST to Orthanc: HTTP {status}, {direct:.1f} s, {rate:.1f} MiB/s, {stored}"
            )
            orthanc.delete_all()
            proxy, url = start_proxy(orthanc.dicomweb, workdir, args.max_instances)
            try:
                status, split = asyncio.run(upload(url, body))
                rss = peak_rss_mib(proxy.pid)
            finally:
                proxy.terminate()
                proxy.wait(30)
            stored = orthanc.instance_count()
            rate = size / 2**20 / split
            print(
                f"through the proxy:      HTTP {status}, {split:.1f} s, {rate:.1f} MiB/s, {stored}"
            )
            print(f"ratio (proxy / direct throughput): {direct / split:.2f}")
            print(f"proxy peak RSS: {rss:.0f} MiB")
        finally:
            orthanc.stop()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
