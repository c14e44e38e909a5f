"""Readiness (SPEC section 2): upstream reachable with its auth, data dirs writable.

The upstream is asked at most once per :data:`INTERVAL` seconds whatever the probe
rate, and concurrent probes share one check.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from proxy.errors import UpstreamAuthFailed, UpstreamError
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
        upstream = await self._probe_upstream()
        writable = all(_writable(path) for path in self._paths())
        return {
            "ready": upstream == "ok" and writable,
            "upstream": upstream,
            "storage": "ok" if writable else "not writable",
        }

    def _paths(self) -> list[Path]:
        return data_paths(self._settings)

    async def _probe_upstream(self) -> str:
        """One QIDO-RS query with the configured auth: the cheapest real round trip."""
        url = self._upstream.base / "studies"
        try:
            async with self._upstream.request(
                "GET", url.with_query(limit="1"), {"Accept": "application/dicom+json"}
            ) as response:
                return "ok" if response.status < 300 else f"HTTP {response.status}"
        except UpstreamError as exc:
            return exc.title


def data_paths(settings: Settings) -> list[Path]:
    if settings.no_cache:
        return [settings.spool_path]
    return [settings.cache_path, settings.spool_path]


# -- dicomweb-proxy check ---------------------------------------------------------------

Finding = tuple[str, bool, str]  # step, passed, what happened (never a secret)


async def diagnose(settings: Settings, upstream: Upstream) -> list[Finding]:
    """Each step of reaching the upstream, saying exactly which one failed:
    obtaining the credential (token endpoint unreachable, client rejected, ...),
    then one QIDO-RS query with it, then the data directories."""
    findings = [await _check_credentials(settings, upstream)]
    if findings[0][1]:
        findings.append(await _check_qido(settings, upstream))
    unwritable = [str(path) for path in data_paths(settings) if not _writable(path)]
    findings.append(
        (
            "storage",
            not unwritable,
            f"not writable: {', '.join(unwritable)}" if unwritable else "writable",
        )
    )
    return findings


async def _check_credentials(settings: Settings, upstream: Upstream) -> Finding:
    credentials = upstream.credentials
    if credentials is None:
        mode = settings.upstream_auth
        note = "clients' credentials are forwarded" if mode == "passthrough" else "no credentials"
        return ("upstream auth", True, f"{mode}: {note}")
    try:
        await credentials.authorization()
    except UpstreamAuthFailed as exc:
        return ("upstream auth", False, f"{credentials.describe()}: {exc.detail}")
    return ("upstream auth", True, f"{credentials.describe()}: credential ready")


async def _check_qido(settings: Settings, upstream: Upstream) -> Finding:
    url = (upstream.base / "studies").with_query(limit="1")
    try:
        async with upstream.request("GET", url, {"Accept": "application/dicom+json"}) as reply:
            status = reply.status
    except UpstreamError as exc:
        return ("QIDO-RS", False, exc.detail)
    if status < 300:
        return ("QIDO-RS", True, f"HTTP {status} from {url.with_query(None)}")
    return ("QIDO-RS", False, _refusal(settings, status))


def _refusal(settings: Settings, status: int) -> str:
    if status == 401 and settings.upstream_auth in {"none", "passthrough"}:
        return "the upstream requires authentication: HTTP 401 (see --upstream-auth)"
    if status == 401:
        return "the upstream rejected the credentials: HTTP 401"
    if status == 403:
        return "the upstream forbids QIDO-RS to these credentials: HTTP 403"
    return f"the upstream answered HTTP {status}"


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            return True
    except OSError:
        return False
