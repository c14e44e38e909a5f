"""``dicomweb-proxy check``: does this configuration work against its upstream?

Runs, in order: the configuration (already parsed when we get here), the data
directories, the upstream credential (a token fetched, a file read), the upstream
reached with it, and a QIDO-RS round trip (PS3.18 section 10.6:
``GET {base}/studies?limit=1`` answered by a JSON array of datasets).  Each check prints
one line saying exactly what failed, never a secret; the exit status is 0 only when all
passed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from proxy import auth
from proxy.errors import UpstreamAuthFailed, UpstreamError
from proxy.health import data_paths, writable
from proxy.settings import Settings
from proxy.streams import read_at_most
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
    upstream = Upstream(settings, auth.credentials_from(settings))
    try:
        credential = await _credential(settings, upstream)
        results.append(credential)
        if credential.ok:
            results += await _round_trip(settings, upstream)
    finally:
        await upstream.close()
    return results


async def _credential(settings: Settings, upstream: Upstream) -> Result:
    credentials = upstream.credentials
    if credentials is None:
        mode = settings.upstream_auth
        note = "clients' credentials are forwarded" if mode == "passthrough" else "no credentials"
        return Result("upstream auth", True, f"{mode}: {note}")
    try:
        source = await credentials.ready()  # names the source: key file, metadata server...
    except UpstreamAuthFailed as exc:
        return Result("upstream auth", False, f"{credentials.describe()}: {exc.detail}")
    return Result("upstream auth", True, f"{source}: credential ready")


def _config(settings: Settings) -> Result:
    masked = settings.masked()
    detail = f"upstream {masked['upstream_url']}, upstream auth {settings.upstream_auth}"
    return Result("config", True, detail)


def _storage(settings: Settings) -> Result:
    paths = [*data_paths(settings), settings.dead_letter_path]
    unwritable = [str(path) for path in paths if not writable(path)]
    if unwritable:
        return Result("storage", False, "not writable: " + ", ".join(unwritable))
    return Result("storage", True, "writable: " + ", ".join(str(path) for path in paths))


async def _round_trip(settings: Settings, upstream: Upstream) -> list[Result]:
    started = time.monotonic()
    try:
        async with upstream.probe() as response:
            elapsed = f"{(time.monotonic() - started) * 1000:.0f} ms"
            reached = Result("upstream", True, f"HTTP {response.status} in {elapsed}")
            if response.status in (401, 403):
                return [Result("upstream", False, _refusal(settings, response.status))]
            if response.status >= 300:
                answer = f"HTTP {response.status} from {response.url}"
                return [reached, Result("qido", False, answer)]
            body = await read_at_most(iter_body(response), _QIDO_LIMIT)
            if body is None:
                return [reached, Result("qido", False, "answer larger than 1 MiB")]
    except UpstreamError as exc:
        return [Result("upstream", False, f"{exc.title}: {exc.detail}")]
    return [reached, _qido_answer(body)]


def _refusal(settings: Settings, status: int) -> str:
    if status == 401 and settings.upstream_auth in {"none", "passthrough"}:
        return "the upstream requires authentication: HTTP 401 (see --upstream-auth)"
    if status == 401:
        return "the upstream rejected the credentials: HTTP 401"
    return "the upstream forbids QIDO-RS to these credentials: HTTP 403"


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
