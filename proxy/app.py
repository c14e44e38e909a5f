"""``create_app(settings)``: routes, middlewares and the resources they share.

Reads no environment: everything comes from the frozen :class:`Settings`.  Resources
(the upstream session, the cache, ...) live in ``cleanup_ctx`` under the typed AppKeys
of :mod:`proxy.state`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from aiohttp.typedefs import Handler

from proxy import auth, forward, logs, metrics_endpoint, status, viewer
from proxy import exchange as exchanges
from proxy.admin import load_admin_token
from proxy.cache import routes as cache_routes
from proxy.cache.express import Lane
from proxy.cache.service import Cache
from proxy.cache.store import Store
from proxy.dicomweb.uri import Transaction
from proxy.errors import PROBLEM_JSON, NotFound, ProxyError, ShuttingDown
from proxy.health import Readiness
from proxy.settings import Settings
from proxy.state import (
    ADMIN_TOKEN,
    CACHE,
    DEAD_LETTERS,
    EXPRESS,
    INBOUND,
    METRICS,
    PARTITIONER,
    READINESS,
    SETTINGS,
    STOPPING,
    STUDIES_CHANGED,
    UPSTREAM,
)
from proxy.stow import http as stow_http
from proxy.stow.service import DeadLetterService
from proxy.upstream import Upstream

log = logging.getLogger("dicomweb_proxy")


def create_app(settings: Settings, *, clock: Callable[[], float] = time.time) -> web.Application:
    """``clock`` gives the cache's wall-clock seconds (tests pass a fake one to step
    through TTLs, finality and stale-if-error without sleeping)."""
    app = web.Application(
        # Access accounting outermost; inbound auth after CORS: browsers send
        # preflights without credentials.
        middlewares=[
            logs.access_middleware,
            problem_middleware,
            cors_middleware,
            auth.inbound_middleware,
        ],
        client_max_size=0,
        handler_args={
            # The access line and the request metrics, whichever runner serves the app.
            **logs.handler_args(),
            "max_field_size": 16384,
            "max_line_size": 16384,
            # aiohttp closes a connection whose request has not fully arrived when its
            # keep-alive timer fires, armed from the connection's start: this bounds how
            # long a slow client (slowloris) may take to send its headers.
            "keepalive_timeout": settings.client_timeout,
        },
    )
    app[SETTINGS] = settings
    app[STOPPING] = asyncio.Event()
    app[STUDIES_CHANGED] = []
    token = load_admin_token(settings)
    if token:
        app[ADMIN_TOKEN] = token
    gate = auth.inbound_from(settings)
    if gate is not None:
        app[INBOUND] = gate
    app[PARTITIONER] = auth.partitioner_from(settings)
    app.cleanup_ctx.append(_upstream_ctx)
    if not settings.no_cache:
        app.cleanup_ctx.append(functools.partial(_cache_ctx, clock=clock))
        cache_routes.add_routes(app)
    app.on_shutdown.append(_mark_stopping)
    app.on_response_prepare.append(_cors_headers)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    stow_http.add_admin_routes(app)
    metrics_endpoint.setup(app, settings)
    logs.setup(app)
    status.setup(app)
    base = settings.base_path
    app.router.add_route("*", base, dicomweb)
    app.router.add_route("*", base + "/{tail:.*}", dicomweb)
    if settings.viewer_dir:
        viewer.add_routes(app, settings, settings.viewer_dir)
    return app


async def _upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    upstream = Upstream(settings, auth.credentials_from(settings))
    upstream.observers.append(logs.observe_upstream(app))
    app[UPSTREAM] = upstream
    app[READINESS] = Readiness(settings, upstream)
    subscribers = app[STUDIES_CHANGED]  # the same list: the cache joins it once open
    app[DEAD_LETTERS] = DeadLetterService(
        settings, upstream, studies_changed=subscribers, metrics=app.get(METRICS)
    )
    yield
    await upstream.close()


async def _cache_ctx(app: web.Application, clock: Callable[[], float]) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    store = Store.open(settings.cache_path, settings.cache_size)
    cache = Cache(settings, store, app[UPSTREAM], app.get(METRICS), clock=clock)
    app[CACHE] = cache
    app[STUDIES_CHANGED].append(cache.studies_changed)
    if _express_allowed(app):
        cache.express = app[EXPRESS] = Lane(cache.fresh_hit)
    yield
    await cache.close()


def _express_allowed(app: web.Application) -> bool:
    """The express lane answers without the inbound check: only when there is none.
    (With ``passthrough``, a request carrying credentials is never one it answers.)"""
    return not app[SETTINGS].no_express and INBOUND not in app


async def _mark_stopping(app: web.Application) -> None:
    app[STOPPING].set()
    lane = app.get(EXPRESS)
    if lane is not None:
        lane.close()


# -- handlers -----------------------------------------------------------------------


async def dicomweb(request: web.Request) -> web.StreamResponse:
    """Every request under the DICOMweb base."""
    app = request.app
    if app[STOPPING].is_set():
        raise ShuttingDown("the proxy is shutting down")
    settings = app[SETTINGS]
    passthrough = settings.upstream_auth == "passthrough"
    exchange = exchanges.build(request, settings, pass_credentials=passthrough)
    request[exchanges.EXCHANGE] = exchange
    if exchange.resource.transaction is Transaction.STOW:
        return await stow_http.handle(request, exchange)
    cache = app.get(CACHE)
    policy = cache.policy_for(request, exchange, auth.partition(request)) if cache else None
    if cache is not None and policy is not None:
        return await cache.handle(request, exchange, policy)
    return await forward.forward(request, exchange, app[UPSTREAM], settings.max_body)


async def healthz(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.StreamResponse:
    report = await request.app[READINESS].check()
    return web.json_response(report, status=200 if report["ready"] else 503)


# -- middlewares --------------------------------------------------------------------


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render the proxy's own errors as RFC 9457 problem documents (SPEC section 2)."""
    try:
        return await handler(request)
    except ProxyError as exc:
        return problem_response(request, exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = NotFound("no such route") if exc.status == 404 else ProxyError(exc.reason)
        error.status = exc.status
        error.title = exc.reason
        return problem_response(request, error)


def problem_response(request: web.Request, error: ProxyError) -> web.Response:
    exchange = request.get(exchanges.EXCHANGE)
    rid = exchange.request_id if exchange else exchanges.request_id(request)
    if error.status >= 500:
        log.warning(
            "%s %s -> %d %s [%s]", request.method, request.path, error.status, error.detail, rid
        )
    return web.Response(
        status=error.status,
        body=error.problem(rid, request.path),
        content_type=PROBLEM_JSON,
        headers={**error.headers, "X-Request-ID": rid},
    )


_PREFLIGHT_HEADERS = "Accept, Authorization, Content-Type, Cache-Control, X-Request-ID"
_EXPOSED = "Content-Location, Location, Warning, X-Cache, X-Request-ID, ETag"


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer CORS preflights locally (``--cors-origins``); others pass on."""
    allowed = request.app[SETTINGS].cors_origins
    is_preflight = (
        request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers
    )
    if not allowed or not is_preflight or "Origin" not in request.headers:
        return await handler(request)
    if not _origin_allowed(allowed, request.headers["Origin"]):
        raise web.HTTPForbidden(reason="origin not allowed")
    requested = request.headers.get("Access-Control-Request-Headers", _PREFLIGHT_HEADERS)
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Methods": "GET, HEAD, POST, DELETE, OPTIONS",
            "Access-Control-Allow-Headers": requested,
            "Access-Control-Max-Age": "600",
        },
    )


async def _cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Echo an allowed ``Origin`` on every response, streamed ones included."""
    allowed = request.app[SETTINGS].cors_origins
    origin = request.headers.get("Origin")
    if not allowed or not origin or not _origin_allowed(allowed, origin):
        return
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Expose-Headers"] = _EXPOSED
    response.headers.add("Vary", "Origin")


def _origin_allowed(allowed: tuple[str, ...], origin: str) -> bool:
    return "*" in allowed or origin in allowed
