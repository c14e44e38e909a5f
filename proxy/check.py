"""``dicomweb-proxy check``: does this configuration work against its upstream?

Runs, in order: the configuration (already parsed when we get here), the data
directories, the upstream reached with its auth, and a QIDO-RS round trip (PS3.18
section 10.6: ``GET {base}/studies?limit=1`` answered by a JSON array of datasets).
Each check prints one line; the exit status is 0 only when all passed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from proxy.errors import UpstreamError
from proxy.health import writable
from proxy.settings import Settings
from proxy.upstream import Upstream, iter_body

# A QIDO answer for one study is a few KiB; more means something else answered.
_QIDO_LIMIT = 1024 * 1024


@dataclass(frozen=True)
class Result:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{self.name}: {'ok' if self.ok else 'FAILED'} ({self.detail})"


async def run(settings: Settings) -> list[Result]:
    results = [_config(settings), _storage(settings)]
    upstream = Upstream(settings)
    try:
        results += await _round_trip(upstream)
    finally:
        await upstream.close()
    return results


def _config(settings: Settings) -> Result:
    masked = settings.masked()
    detail = f"upstream {masked['upstream_url']}, upstream auth {settings.upstream_auth}"
    return Result("config", True, detail)


def _storage(settings: Settings) -> Result:
    paths = [settings.spool_path, settings.dead_letter_path]
    if not settings.no_cache:
        paths.insert(0, settings.cache_path)
    unwritable = [str(path) for path in paths if not writable(path)]
    if unwritable:
        return Result("storage", False, "not writable: " + ", ".join(unwritable))
    return Result("storage", True, "writable: " + ", ".join(str(path) for path in paths))


async def _round_trip(upstream: Upstream) -> list[Result]:
    url = (upstream.base / "studies").with_query(limit="1")
    started = time.monotonic()
    try:
        async with upstream.request("GET", url, {"Accept": "application/dicom+json"}) as response:
            elapsed = f"{(time.monotonic() - started) * 1000:.0f} ms"
            reached = Result("upstream", True, f"HTTP {response.status} in {elapsed}")
            if response.status in (401, 403):
                detail = f"HTTP {response.status}: check the upstream credentials"
                return [Result("upstream", False, detail)]
            if response.status >= 300:
                return [reached, Result("qido", False, f"HTTP {response.status} from {url}")]
            body = b""
            async for chunk in iter_body(response):
                body += chunk
                if len(body) > _QIDO_LIMIT:
                    return [reached, Result("qido", False, "answer larger than 1 MiB")]
    except UpstreamError as exc:
        return [Result("upstream", False, f"{exc.title}: {exc.detail}")]
    return [reached, _qido_answer(body)]


def _qido_answer(body: bytes) -> Result:
    """An empty body (204, nothing stored) or a JSON array of objects."""
    if not body.strip():
        return Result("qido", True, "no studies on the upstream")
    try:
        found = json.loads(body)
    except ValueError:
        return Result("qido", False, "the answer is not JSON")
    if not isinstance(found, list) or not all(isinstance(item, dict) for item in found):
        return Result("qido", False, "the answer is not a JSON array of datasets")
    return Result("qido", True, f"{len(found)} study returned")
