"""Section 3: many concurrent misses for one instance (single flight).

Each target sits behind (or is) a counting relay in front of Orthanc; ``N`` clients ask
for the same, never-fetched instance at once, on their own connections.  The relay's
count says how many of those requests reached the origin.
"""

from __future__ import annotations

import asyncio
import math
import time

import aiohttp

from bench.data import INSTANCE_ACCEPT


async def _one(session: aiohttp.ClientSession, url: str, start: asyncio.Event) -> float:
    await start.wait()
    began = time.perf_counter()
    async with session.get(url, headers={"Accept": INSTANCE_ACCEPT}) as response:
        async for _ in response.content.iter_chunked(256 * 1024):
            pass
        if response.status != 200:
            raise RuntimeError(f"{url} answered {response.status}")
    return (time.perf_counter() - began) * 1000


async def burst(url: str, clients: int) -> list[float]:
    """Latencies (ms) of ``clients`` simultaneous GETs of ``url``."""
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = asyncio.Event()
        tasks = [asyncio.ensure_future(_one(session, url, start)) for _ in range(clients)]
        await asyncio.sleep(0.05)  # every task is parked on the event
        start.set()
        return list(await asyncio.gather(*tasks))


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (so p99 of 50 samples is the slowest of them)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]
