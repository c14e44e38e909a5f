"""The access log: one line per request, as text or JSON (SPEC section 6).

Each line carries the method, the path with query *values* removed
(``/dicom-web/studies?PatientName=&limit=`` — values carry patient names, SPEC
section 4), status, bytes sent, duration, the cache result (the response's ``X-Cache``),
the time the upstream took to send its headers, and the request id.  No header value,
query value or secret is ever written.

The same middleware records the request metrics (:mod:`proxy.metrics`) and keeps the
last :data:`RECENT_SIZE` records for the ``/admin/`` status page.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from proxy import exchange as exchanges
from proxy import metrics
from proxy.cache.express import Answer
from proxy.state import RECENT
from proxy.upstream import UpstreamObserver

ACCESS = logging.getLogger("dicomweb_proxy.access")
RECENT_SIZE = 50

AccessRecord = dict[str, Any]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# A query parameter name worth keeping: attribute keywords, tags, dotted sequences.
_QUERY_KEY = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_UNPRINTABLE = re.compile(r"[^\x21-\x7e]")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
_FROM_CACHE = frozenset({"HIT", "STALE", "REVALIDATED"})


@dataclass
class UpstreamTiming:
    """Upstream requests made while serving one client request."""

    seconds: float = 0.0
    requests: int = 0


_TIMING: ContextVar[UpstreamTiming | None] = ContextVar("upstream_timing", default=None)


def setup(app: web.Application) -> None:
    app[RECENT] = deque(maxlen=RECENT_SIZE)


def observe_upstream(app: web.Application) -> UpstreamObserver:
    """An :class:`~proxy.upstream.Upstream` observer: metrics, and the current line's
    upstream time (a ContextVar: the upstream call runs in the request's task)."""

    def observe(status: str, seconds: float) -> None:
        metrics.upstream_response(app, status, seconds)
        timing = _TIMING.get()
        if timing is not None:
            timing.seconds += seconds
            timing.requests += 1

    return observe


# -- the middleware -------------------------------------------------------------------


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost middleware: the response is finished here, so bytes and duration are
    those of the whole exchange."""
    started = time.perf_counter()
    timing = UpstreamTiming()
    token = _TIMING.set(timing)
    response: web.StreamResponse | None = None
    status = 500
    try:
        response = await handler(request)
        status = response.status
        await _finish(request, response)
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = 499  # the client went away before the end (nginx's convention)
        raise
    except ConnectionResetError:
        # The client went away mid-response: nothing to report to anyone.  Raising
        # would make aiohttp log an "Error handling request" traceback for it.
        status = 499
        if request.transport is not None:
            request.transport.abort()
        return response or web.Response(status=499)
    finally:
        _TIMING.reset(token)
        seconds = time.perf_counter() - started
        _account(request, access_record(request, response, status, seconds, timing), seconds)


class FileResponse(web.FileResponse):
    """The file response to use behind :func:`access_middleware`.

    The middleware finishes every response itself (so bytes and duration cover the
    whole exchange); aiohttp then calls ``prepare`` again.  That second call is a no-op
    for a StreamResponse, but aiohttp's FileResponse would open and send the file again.
    """

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:
            return None
        return await super().prepare(request)


async def _finish(request: web.Request, response: web.StreamResponse) -> None:
    """Send a not-yet-sent response now; aiohttp's own send afterwards is a no-op."""
    if not response.prepared:
        await response.prepare(request)
    await response.write_eof()


def access_record(
    request: web.Request,
    response: web.StreamResponse | None,
    status: int,
    seconds: float,
    timing: UpstreamTiming,
) -> AccessRecord:
    exchange = request.get(exchanges.EXCHANGE)
    headers = response.headers if response is not None else {}
    return {
        "time": time.time(),
        "method": request.method if request.method in _METHODS else "OTHER",
        "path": safe_path(request.raw_path),
        "status": status,
        "bytes": _bytes_sent(request, response),
        "duration_ms": round(seconds * 1000, 3),
        "cache": headers.get("X-Cache"),
        "upstream_ms": round(timing.seconds * 1000, 3) if timing.requests else None,
        "request_id": _request_id(request, headers),
        "transaction": exchange.resource.transaction.value if exchange else "other",
        "remote": request.remote,
    }


def _bytes_sent(request: web.Request, response: web.StreamResponse | None) -> int:
    if response is None:
        return 0
    sent = response.body_length
    # sendfile() bypasses the writer's byte count.  Responses that send that way say
    # how much went past the writer.
    sent += getattr(response, "sent_directly", 0)
    length = response.content_length or 0
    if isinstance(response, web.FileResponse) and request.method != "HEAD" and sent < length:
        sent += length
    return sent


def _request_id(request: web.Request, headers: Any) -> str:
    exchange = request.get(exchanges.EXCHANGE)
    if exchange:
        return str(exchange.request_id)
    # Set by the proxy itself (problem documents); validated when taken from a client.
    given = headers.get("X-Request-ID")
    return str(given) if given else exchanges.request_id(request)


def safe_path(raw_path: str) -> str:
    """The path with every query value removed; keys kept when they look like keys."""
    path, sep, query = raw_path.partition("?")
    path = _UNPRINTABLE.sub("?", path)
    if not sep:
        return path
    kept = []
    for item in query.split("&"):
        key, has_value, _ = item.partition("=")
        if has_value:
            kept.append((key if _QUERY_KEY.match(key) else "*") + "=")
        elif item:
            kept.append("*")  # a bare word could itself be a value
    return path + "?" + "&".join(kept)


def _account(request: web.Request, record: AccessRecord, seconds: float) -> None:
    _record(request.app, record, seconds, dicomweb=request.get(exchanges.EXCHANGE) is not None)


def account_express(
    app: web.Application,
    answer: Answer,
    request_id: str,
    remote: str | None,
    seconds: float,
    head_bytes: int,
) -> None:
    """An answer of the express lane (:mod:`proxy.server`): counted, kept and logged
    as a hit answered through :func:`access_middleware` is."""
    fixed = answer.record
    if "path" not in fixed:  # once per answer: what every line of it shares
        fixed["path"] = safe_path(fixed["target"])
        fixed["metrics"] = metrics.hit_recorder(app, fixed["transaction"])
    record = {
        "time": time.time(),
        "method": "GET",
        "path": fixed["path"],
        "status": 200,
        "bytes": head_bytes + answer.size,
        "duration_ms": round(seconds * 1000, 3),
        "cache": "HIT",
        "upstream_ms": None,
        "request_id": request_id,
        "transaction": fixed["transaction"],
        "remote": remote,
    }
    fixed["metrics"](seconds, record["bytes"])
    _keep_and_log(app, record)


def _record(app: web.Application, record: AccessRecord, seconds: float, *, dicomweb: bool) -> None:
    """Metrics, then the ring buffer and the log line."""
    metrics.request_done(app, record["transaction"], record["method"], record["status"], seconds)
    cache = record["cache"]
    if cache:
        metrics.cache_result(app, str(cache).lower())
    if dicomweb:
        source = "cache" if str(cache).upper() in _FROM_CACHE else "upstream"
        metrics.served_bytes(app, source, record["bytes"])
    _keep_and_log(app, record)


def _keep_and_log(app: web.Application, record: AccessRecord) -> None:
    """The ring buffer for ``/admin/``, and the log line."""
    recent = app.get(RECENT)
    if recent is not None:
        recent.append(record)
    if ACCESS.isEnabledFor(logging.INFO):
        ACCESS.info(text_line(record), extra={"access": record})


def text_line(record: AccessRecord) -> str:
    upstream = record["upstream_ms"]
    return (
        f"{record['method']} {record['path']} {record['status']} {record['bytes']}B "
        f"{record['duration_ms']:.1f}ms cache={record['cache'] or '-'} "
        f"upstream={f'{upstream:.1f}ms' if upstream is not None else '-'} "
        f"id={record['request_id']} remote={record['remote'] or '-'}"
    )
