"""Added latency measured in pairs (SPEC section 8: added p50 for study metadata).

Orthanc's own time for a study's metadata drifts by several milliseconds from one
few-second round to the next, so p50s of separate wrk rounds cannot resolve a 2 ms
difference.  Here each sample is a pair: the same request straight to the origin and
through the target, back to back on kept-alive connections, in alternating order; the
figure is the median of the pair differences, which sees the same drift on both sides.
The second request of a pair is often faster (about 1 ms here, whichever goes second),
so the medians of the two orders are averaged and that bias cancels.
"""

from __future__ import annotations

import http.client
import statistics
import time
import urllib.parse
from dataclasses import dataclass


@dataclass(frozen=True)
class Added:
    """Target time minus origin time, per pair, in milliseconds."""

    median_ms: float
    p25_ms: float
    p75_ms: float
    pairs: int


class _Client:
    def __init__(self, base_url: str) -> None:
        parts = urllib.parse.urlsplit(base_url)
        self.prefix = parts.path.rstrip("/")
        self.connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)

    def timed_get(self, path: str, accept: str) -> float:
        started = time.perf_counter()
        self.connection.request("GET", self.prefix + path, headers={"Accept": accept})
        response = self.connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path}: HTTP {response.status}")
        return (time.perf_counter() - started) * 1000

    def close(self) -> None:
        self.connection.close()


def added_latency(
    origin: str, targets: dict[str, str], path: str, accept: str, pairs: int = 200
) -> dict[str, Added]:
    """For each target: its time minus ``origin``'s for the same request, in pairs."""
    direct = _Client(origin)
    clients = {name: _Client(url) for name, url in targets.items()}
    differences: dict[str, list[float]] = {name: [] for name in targets}
    try:
        for client in (direct, *clients.values()):
            client.timed_get(path, accept)  # connections open, caches of the OS warm
        for number in range(pairs):
            for name, client in clients.items():
                if number % 2:
                    through, straight = (
                        client.timed_get(path, accept),
                        direct.timed_get(path, accept),
                    )
                else:
                    straight, through = (
                        direct.timed_get(path, accept),
                        client.timed_get(path, accept),
                    )
                differences[name].append(through - straight)
    finally:
        for client in (direct, *clients.values()):
            client.close()
    return {name: _summary(values[1::2], values[::2]) for name, values in differences.items()}


def _pair(direct: _Client, client: _Client, path: str, accept: str, target_first: bool) -> float:
    if target_first:
        through = client.timed_get(path, accept)
        return through - direct.timed_get(path, accept)
    straight = direct.timed_get(path, accept)
    return client.timed_get(path, accept) - straight


def _summary(target_first: list[float], target_second: list[float]) -> Added:
    """The mean of the two orders' medians; quartiles of all pairs."""
    median = (statistics.median(target_first) + statistics.median(target_second)) / 2
    quartiles = statistics.quantiles(target_first + target_second, n=4)
    return Added(median, quartiles[0], quartiles[2], len(target_first) + len(target_second))
