"""Prometheus metrics (SPEC section 6), one :class:`Metrics` per application.

Every application gets its own :class:`~prometheus_client.CollectorRegistry` under the
:data:`proxy.state.METRICS` AppKey — never the process-global default registry, so tests can build
many applications in one process.  Other modules record through the small typed
functions below; each takes the ``web.Application`` (or a request, or a
:class:`Metrics`) and does nothing when the application has no metrics::

    metrics.request_done(app, "wado", "GET", 200, seconds)   # the access logger
    metrics.upstream_response(app, "200", seconds)           # Upstream observer (TTFB)
    metrics.cache_result(app, "hit")       # hit | miss | stale | bypass | revalidated
    metrics.served_bytes(app, "cache", n)  # cache | upstream
    metrics.stow_batch(app, "stored", n)   # stored | partial | failed | retried | split
    metrics.stow_instances(app, "stored", n)  # stored | failed | dead_lettered
    metrics.dead_letter_entries(app, n)    # gauge: entries now in the dead-letter store
    metrics.cache_not_stored(m, "unexpected_type")  # unexpected_type | undecodable

``request_done``, ``cache_result`` and ``served_bytes`` are recorded once per client
request, by aiohttp's access logger (:class:`proxy.logs.AccessLogger`) or for an answer
of the express lane (:func:`hit_recorder`), the cache result from the response's
``X-Cache`` header (SPEC section 3): the cache only has to set that header, and its
hit ratio (:meth:`~proxy.cache.service.Cache.stats`) is read back from these counts
(:meth:`Metrics.own_cache_results`).  ``dicomweb_proxy_cache_bytes`` and
``..._entries`` are read at scrape time from the cache's own figures (the same
``stats()``), when the application has a cache.

With ``--workers`` > 1 a worker builds its ``Metrics(multiprocess_dir=...)`` and a
scrape of any worker returns the sum over all of them (:mod:`proxy.metrics_multiprocess`).
``/metrics`` itself is served by :mod:`proxy.metrics_endpoint`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from proxy.metrics_multiprocess import read_multiprocess, use_multiprocess
from proxy.state import CACHE, METRICS

# From a 2 ms metadata hit to a multi-minute study retrieve.
DURATION_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
CACHE_RESULTS = ("hit", "miss", "stale", "bypass", "revalidated")
SOURCES = ("cache", "upstream")
BATCH_OUTCOMES = ("stored", "partial", "failed", "retried", "split")
INSTANCE_OUTCOMES = ("stored", "failed", "dead_lettered")
# Complete 200s the cache refused (SPEC section 3): a Content-Type that does not answer
# the request (a gateway's login page), or a coding the proxy cannot decode.
NOT_STORED_REASONS = ("unexpected_type", "undecodable")


class Metrics:
    """The metric families of SPEC section 6, registered in a private registry."""

    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        if multiprocess_dir is not None:
            use_multiprocess(multiprocess_dir)
        self.registry = CollectorRegistry(auto_describe=True)
        # Labelled children by label values: labels() costs a lock and a few µs per
        # call, on every request of a cache-hit path that is otherwise a sendfile.
        self._children: dict[tuple[object, ...], Any] = {}
        self._define_traffic()
        self._define_cache()
        self._define_stow()

    def _define_traffic(self) -> None:
        reg = self.registry
        self.requests = Counter(
            "dicomweb_proxy_requests",
            "Client requests by DICOMweb transaction, method and status",
            ("transaction", "method", "status"),
            registry=reg,
        )
        self.request_duration = Histogram(
            "dicomweb_proxy_request_duration_seconds",
            "Client request duration, until the last byte was sent",
            ("transaction",),
            buckets=DURATION_BUCKETS,
            registry=reg,
        )
        self.upstream_requests = Counter(
            "dicomweb_proxy_upstream_requests",
            "Upstream requests by status (or error, timeout)",
            ("status",),
            registry=reg,
        )
        self.upstream_duration = Histogram(
            "dicomweb_proxy_upstream_duration_seconds",
            "Upstream time to first byte (response headers)",
            buckets=DURATION_BUCKETS,
            registry=reg,
        )

    def _define_cache(self) -> None:
        reg = self.registry
        self.cache_requests = Counter(
            "dicomweb_proxy_cache_requests",
            "Cacheable requests by cache result",
            ("result",),
            registry=reg,
        )
        self.served = Counter(
            "dicomweb_proxy_cache_served_bytes",
            "Response bytes sent to clients, by where they came from",
            ("source",),
            registry=reg,
        )
        # One cache is shared by all workers: every worker reports the same figure.
        self.cache_bytes = Gauge(
            "dicomweb_proxy_cache_bytes",
            "Bytes held in the disk cache",
            registry=reg,
            multiprocess_mode="mostrecent",
        )
        self.cache_entries = Gauge(
            "dicomweb_proxy_cache_entries",
            "Entries held in the disk cache",
            registry=reg,
            multiprocess_mode="mostrecent",
        )
        self.not_stored = Counter(
            "dicomweb_proxy_cache_not_stored",
            "Complete upstream 200s relayed but not stored, by reason",
            ("reason",),
            registry=reg,
        )
        for reason in NOT_STORED_REASONS:
            self.not_stored.labels(reason)
        for result in CACHE_RESULTS:
            self.cache_requests.labels(result)
        for source in SOURCES:
            self.served.labels(source)

    def _define_stow(self) -> None:
        reg = self.registry
        self.stow_batches = Counter(
            "dicomweb_proxy_stow_batches",
            "Upstream STOW-RS batches by outcome",
            ("outcome",),
            registry=reg,
        )
        self.stow_instances = Counter(
            "dicomweb_proxy_stow_instances",
            "STOW-RS instances by final outcome",
            ("outcome",),
            registry=reg,
        )
        self.dead_letters = Gauge(
            "dicomweb_proxy_dead_letter_entries",
            "Instances kept in the dead-letter store",
            registry=reg,
            multiprocess_mode="mostrecent",
        )
        for outcome in BATCH_OUTCOMES:
            self.stow_batches.labels(outcome)
        for outcome in INSTANCE_OUTCOMES:
            self.stow_instances.labels(outcome)

    def child(self, family: Any, *labels: str) -> Any:
        key = (id(family), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = family.labels(*labels)
        return found

    # -- reading -----------------------------------------------------------------

    def collection_registry(self) -> CollectorRegistry:
        """What a scrape reads: this process's registry, or every worker's files."""
        if self.multiprocess_dir is None:
            return self.registry
        return read_multiprocess(self.multiprocess_dir)

    def render(self) -> bytes:
        return generate_latest(self.collection_registry())

    def value(self, name: str, **labels: str) -> float:
        """One sample's value (0 when absent), e.g. ``value("..._total", status="200")``."""
        registry = self.collection_registry()
        found = registry.get_sample_value(name, labels)
        return float(found) if found is not None else 0.0

    def own_cache_results(self) -> dict[str, int]:
        """This process's cache requests by result, read from its own registry: with
        ``--workers`` a scrape sums every worker's, :meth:`~proxy.cache.service.Cache.stats`
        reports its own process's."""
        found: dict[str, int] = {}
        for family in self.cache_requests.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    found[sample.labels["result"]] = int(sample.value)
        return found

    def total(self, name: str, **labels: str) -> float:
        """The sum over every sample of ``name`` whose labels include ``labels``."""
        summed = 0.0
        for family in self.collection_registry().collect():
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    summed += sample.value
        return summed


Target = web.Application | web.Request | Metrics | None


def _resolve(target: Target) -> Metrics | None:
    if target is None or isinstance(target, Metrics):
        return target
    app = target.app if isinstance(target, web.Request) else target
    return app.get(METRICS)


# -- recording ------------------------------------------------------------------------


def request_done(
    target: Target, transaction: str, method: str, status: int, seconds: float
) -> None:
    found = _resolve(target)
    if found:
        found.child(found.requests, transaction, method, str(status)).inc()
        found.child(found.request_duration, transaction).observe(seconds)


def hit_recorder(target: Target, transaction: str) -> Callable[[float, int], None]:
    """What :func:`request_done`, :func:`cache_result` and :func:`served_bytes` record
    for a GET answered 200 from the cache, with the children looked up once: the
    express lane calls it per answer (``recorder(seconds, bytes_sent)``)."""
    found = _resolve(target)
    if not found:
        return lambda seconds, sent: None
    requests = found.child(found.requests, transaction, "GET", "200")
    duration = found.child(found.request_duration, transaction)
    hits = found.child(found.cache_requests, "hit")
    served = found.child(found.served, "cache")

    def record(seconds: float, sent: int) -> None:
        requests.inc()
        duration.observe(seconds)
        hits.inc()
        served.inc(sent)

    return record


def upstream_response(target: Target, status: str, seconds: float) -> None:
    """``status`` is the HTTP status, or ``error`` / ``timeout`` when none came."""
    found = _resolve(target)
    if found:
        found.child(found.upstream_requests, status).inc()
        found.upstream_duration.observe(seconds)


def cache_result(target: Target, result: str) -> None:
    found = _resolve(target)
    if found and result in CACHE_RESULTS:
        found.child(found.cache_requests, result).inc()


def served_bytes(target: Target, source: str, count: int) -> None:
    found = _resolve(target)
    if found and count > 0:
        found.child(found.served, source).inc(count)


def stow_batch(target: Target, outcome: str, count: int = 1) -> None:
    found = _resolve(target)
    if found and count > 0:
        found.stow_batches.labels(outcome).inc(count)


def stow_instances(target: Target, outcome: str, count: int = 1) -> None:
    found = _resolve(target)
    if found and count > 0:
        found.stow_instances.labels(outcome).inc(count)


def cache_not_stored(target: Target, reason: str) -> None:
    found = _resolve(target)
    if found and reason in NOT_STORED_REASONS:
        found.child(found.not_stored, reason).inc()


def dead_letter_entries(target: Target, count: int) -> None:
    found = _resolve(target)
    if found:
        found.dead_letters.set(count)


def cache_stats(app: web.Application) -> Mapping[str, int]:
    """The cache's own figures, ``{}`` without a cache (``--no-cache``)."""
    cache = app.get(CACHE)
    return cache.stats() if cache is not None else {}
