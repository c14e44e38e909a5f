"""Readiness (SPEC section 2): upstream reachable with its auth, data dirs writable.

The upstream is asked at most once per :data:`INTERVAL` seconds whatever the probe
rate, and concurrent probes share one check.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from proxy.errors import UpstreamError
from proxy.settings import Settings
from proxy.upstream import Upstream

INTERVAL = 5.0


class Readiness:
    def __init__(self, settings: Settings, upstream: Upstream) -> None:
        self._settings = settings
        self._upstream = upstream
        self._lock = asyncio.Lock()
        self._checked_at = -INTERVAL
        self._report: dict[str, object] = {}

    async def check(self) -> dict[str, object]:
        async with self._lock:
            if time.monotonic() - self._checked_at >= INTERVAL:
                self._report = await self._probe()
                self._checked_at = time.monotonic()
            return self._report

    async def _probe(self) -> dict[str, object]:
        started = time.monotonic()
        upstream = await self._probe_upstream()
        latency = time.monotonic() - started
        storage_ok = all(writable(path) for path in self._paths())
        return {
            "ready": upstream == "ok" and storage_ok,
            "upstream": upstream,
            "upstream_latency_ms": round(latency * 1000, 1),
            "storage": "ok" if storage_ok else "not writable",
        }

    def _paths(self) -> list[Path]:
        return data_paths(self._settings)

    async def _probe_upstream(self) -> str:
        """``Upstream.probe``: its status, or what went wrong."""
        try:
            async with self._upstream.probe() as response:
                return "ok" if response.status < 300 else f"HTTP {response.status}"
        except UpstreamError as exc:
            return exc.title


def data_paths(settings: Settings) -> list[Path]:
    if settings.no_cache:
        return [settings.spool_path]
    return [settings.cache_path, settings.spool_path]


def writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            return True
    except OSError:
        return False
