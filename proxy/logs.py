"""The access log: one line per request, as text or JSON (SPEC section 6).

Each line carries the method, the path with query *values* removed
(``/dicom-web/studies?PatientName=&limit=`` — values carry patient names, SPEC
section 4), status, bytes sent, duration, the cache result (the response's ``X-Cache``),
the time the upstream took to send its headers, and the request id.  No header value,
query value or secret is ever written.

aiohttp finishes each response and then calls its access logger (:class:`AccessLogger`,
given to every runner by ``create_app``'s ``handler_args``): that one call per request
writes the line, records the request metrics (:mod:`proxy.metrics`: requests, duration,
cache result, bytes served) and keeps the last :data:`RECENT_SIZE` records for the
``/admin/`` status page.  :func:`access_middleware` only does what must happen inside the
request: it starts the upstream timing, answers 499 for a client gone mid-response,
and accounts for the requests aiohttp calls no logger for (a cancelled handler, one
that failed after its response began).  The express lane's answers are accounted
by :func:`account_express`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Handler

from proxy import exchange as exchanges
from proxy import metrics
from proxy.cache.express import Answer
from proxy.state import RECENT
from proxy.upstream import UpstreamObserver

ACCESS = logging.getLogger("dicomweb_proxy.access")
RECENT_SIZE = 50

AccessRecord = dict[str, Any]


# A query parameter name worth keeping: attribute keywords, tags, dotted sequences.
_QUERY_KEY = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_UNPRINTABLE = re.compile(r"[^\x21-\x7e]")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
_FROM_CACHE = frozenset({"HIT", "STALE", "REVALIDATED"})
CLIENT_GONE = 499  # the client went away before the end (nginx's convention)


@dataclass(slots=True)
class Pending:
    """A client request :func:`access_middleware` saw, until it is accounted for: its
    start, the upstream requests made while serving it, whether its line is written."""

    started: float = field(default_factory=time.perf_counter)
    upstream_seconds: float = 0.0
    upstream_requests: int = 0
    accounted: bool = False


# The request's own (the access logger runs after the middleware has returned); the
# ContextVar is how the upstream, which is not given the request, finds it.
PENDING = web.RequestKey("access_pending", Pending)
_PENDING: ContextVar[Pending | None] = ContextVar("access_pending", default=None)


def setup(app: web.Application) -> None:
    app[RECENT] = deque(maxlen=RECENT_SIZE)


def handler_args() -> dict[str, Any]:
    """What an application passes aiohttp (``web.Application(handler_args=...)``) so that
    every runner serving it, the proxy's and the tests', calls :class:`AccessLogger`."""
    return {"access_log_class": AccessLogger, "access_log": ACCESS}


def observe_upstream(app: web.Application) -> UpstreamObserver:
    """An :class:`~proxy.upstream.Upstream` observer: metrics, and the current line's
    upstream time (a ContextVar: the upstream call runs in the request's task)."""

    def observe(status: str, seconds: float) -> None:
        metrics.upstream_response(app, status, seconds)
        pending = _PENDING.get()
        if pending is not None:
            pending.upstream_seconds += seconds
            pending.upstream_requests += 1

    return observe


# -- inside the request: the middleware ----------------------------------------------


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost middleware: marks the request as one to account for, times its
    upstream requests, and turns a client gone mid-response into a response aiohttp
    logs (status 499, :func:`_status`)."""
    pending = request[PENDING] = Pending()
    task = asyncio.current_task()
    if task is not None:
        task.add_done_callback(lambda done: _account_unlogged(request, pending, done))
    token = _PENDING.set(pending)
    try:
        return await handler(request)
    except ConnectionResetError:
        # The client went away mid-response: nothing to report to anyone.  Raising
        # would make aiohttp log an "Error handling request" traceback for it.
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=CLIENT_GONE)
    finally:
        _PENDING.reset(token)


def _account_unlogged(request: web.Request, pending: Pending, task: asyncio.Task[Any]) -> None:
    """When the request's task ends: aiohttp calls no access logger for a cancelled
    handler (499: the client or the proxy stopped it), nor for one that raised after its
    response began (500, as aiohttp's own answer to a failed handler)."""
    if not pending.accounted:
        status = CLIENT_GONE if task.cancelled() else 500
        _account(request, None, status, time.perf_counter() - pending.started, pending)


# -- after the response: aiohttp's access logger --------------------------------------


class AccessLogger(AbstractAccessLogger):
    """Called by aiohttp once per request, after the response was finished (or the
    client went away while aiohttp finished it), with the time since it began."""

    @property
    def enabled(self) -> bool:
        # aiohttp's default asks the logger's level; the metrics count every request.
        return True

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        pending = request.get(PENDING)
        if pending is None or pending.accounted or not isinstance(request, web.Request):
            return  # aiohttp's own answer to a request that reached no handler (unparsable)
        _account(request, response, _status(request, response), time, pending)


def _status(request: web.BaseRequest, response: web.StreamResponse) -> int:
    """The response's status, or 499 when the connection closed before the end: the
    middleware aborted it, or aiohttp could not finish a response to a client gone."""
    transport = request.transport
    if transport is None or transport.is_closing():
        return CLIENT_GONE
    return response.status


def _account(
    request: web.Request,
    response: web.StreamResponse | None,
    status: int,
    seconds: float,
    pending: Pending,
) -> None:
    pending.accounted = True
    record = access_record(request, response, status, seconds, pending)
    _record(request.app, record, seconds, dicomweb=request.get(exchanges.EXCHANGE) is not None)


def access_record(
    request: web.Request,
    response: web.StreamResponse | None,
    status: int,
    seconds: float,
    pending: Pending,
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
        "upstream_ms": (
            round(pending.upstream_seconds * 1000, 3) if pending.upstream_requests else None
        ),
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


def account_express(
    app: web.Application,
    answer: Answer,
    request_id: str,
    remote: str | None,
    seconds: float,
    head_bytes: int,
) -> None:
    """An answer of the express lane (:mod:`proxy.server`): counted, kept and logged
    as a hit answered through aiohttp is (:class:`AccessLogger`)."""
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
