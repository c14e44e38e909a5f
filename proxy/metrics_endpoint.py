"""``/metrics``: Prometheus text exposition, on the main port or ``--metrics-listen``.

:func:`setup` gives the application its :class:`~proxy.metrics.Metrics` and the route;
the cache gauges are refreshed from the cache's figures at each scrape.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from proxy.metrics import Metrics, cache_stats
from proxy.metrics_multiprocess import multiprocess_dir
from proxy.settings import Settings
from proxy.state import METRICS, METRICS_OWNER


def setup(app: web.Application, settings: Settings) -> None:
    """Create the app's metrics and serve ``/metrics`` (main port or ``--metrics-listen``)."""
    app[METRICS] = Metrics(multiprocess_dir(settings))
    if settings.metrics_listen:
        app.cleanup_ctx.append(
            _separate_listener(
                settings.metrics_listen, settings.workers > 1, settings.client_timeout
            )
        )
    else:
        app.router.add_get("/metrics", metrics_endpoint)


async def metrics_endpoint(request: web.Request) -> web.Response:
    """Prometheus text exposition; no auth (SPEC section 4)."""
    app = request.app.get(METRICS_OWNER, request.app)
    refresh_cache_gauges(app)
    body = app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _separate_listener(
    listen: str, reuse_port: bool, client_timeout: float
) -> Callable[[web.Application], AsyncIterator[None]]:
    """``--metrics-listen``: a second small server that serves ``/metrics`` only.

    A runner of its own (rather than a second site of the main one) keeps DICOMweb off
    the metrics port.  Workers share the port with ``SO_REUSEPORT`` like the main one.
    ``--client-timeout`` bounds slow clients here too (see ``create_app``).
    """
    host, _, port = listen.rpartition(":")

    async def serve(app: web.Application) -> AsyncIterator[None]:
        metrics_app = web.Application()
        metrics_app[METRICS_OWNER] = app
        metrics_app.router.add_get("/metrics", metrics_endpoint)
        runner = web.AppRunner(metrics_app, access_log=None, keepalive_timeout=client_timeout)
        await runner.setup()
        site = web.TCPSite(runner, host.strip("[]"), int(port), reuse_port=reuse_port or None)
        await site.start()
        yield
        await runner.cleanup()

    return serve


def refresh_cache_gauges(app: web.Application) -> None:
    """The cache size gauges, set from the cache's figures just before a scrape."""
    found = app.get(METRICS)
    stats = cache_stats(app)
    if found and stats:
        found.cache_bytes.set(stats.get("bytes", 0))
        found.cache_entries.set(stats.get("entries", 0))
