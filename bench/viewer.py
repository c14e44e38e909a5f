"""Section 4: load a study the way a viewer does, and time it.

Study metadata first (``application/dicom+json``), then every instance it lists, in
instance-number order, with ``concurrency`` requests in flight (6, as a browser allows
per host); ``concurrency=1`` is a user scrolling slice by slice.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp

from bench.data import INSTANCE_ACCEPT, METADATA_ACCEPT

SOP_UID, SERIES_UID, NUMBER = "00080018", "0020000E", "00200013"


def instance_paths(metadata: list[dict[str, dict[str, list[object]]]], study: str) -> list[str]:
    def order(item: dict[str, dict[str, list[object]]]) -> int:
        return int(str(item.get(NUMBER, {}).get("Value", [0])[0]))

    return [
        f"/studies/{study}/series/{item[SERIES_UID]['Value'][0]}"
        f"/instances/{item[SOP_UID]['Value'][0]}"
        for item in sorted(metadata, key=order)
    ]


async def _metadata(session: aiohttp.ClientSession, url: str) -> bytes:
    async with session.get(url, headers={"Accept": METADATA_ACCEPT}) as response:
        if response.status != 200:
            raise RuntimeError(f"{url} answered {response.status}")
        return await response.read()  # what the viewer parses: one study's JSON


async def _instance(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url, headers={"Accept": INSTANCE_ACCEPT}) as response:
        if response.status != 200:
            raise RuntimeError(f"{url} answered {response.status}")
        received = 0
        async for chunk in response.content.iter_chunked(256 * 1024):
            received += len(chunk)
        return received


async def time_metadata(base: str, study: str, headers: dict[str, str]) -> tuple[float, int]:
    """(seconds, bytes on the wire) of one study metadata request sent with exactly
    ``headers`` on a new connection (no ``Accept-Encoding`` unless ``headers`` has one,
    as curl sends it; the body is not decoded)."""
    session = aiohttp.ClientSession(auto_decompress=False, skip_auto_headers=("Accept-Encoding",))
    async with session:
        began = time.perf_counter()
        async with session.get(f"{base}/studies/{study}/metadata", headers=headers) as response:
            if response.status != 200:
                raise RuntimeError(f"{base} answered {response.status} for study metadata")
            body = await response.read()
        return time.perf_counter() - began, len(body)


async def load_study(base: str, study: str, *, concurrency: int = 6) -> tuple[float, int]:
    """(seconds, bytes) to fetch ``base``'s study metadata and then all its instances."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=900)
    began = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        body = await _metadata(session, f"{base}/studies/{study}/metadata")
        paths = instance_paths(json.loads(body), study)
        gate = asyncio.Semaphore(concurrency)

        async def one(path: str) -> int:
            async with gate:
                return await _instance(session, base + path)

        sizes = await asyncio.gather(*(one(path) for path in paths))
    return time.perf_counter() - began, len(body) + sum(sizes)
