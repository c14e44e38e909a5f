"""The cache in the request path: look up, check freshness, serve, or fill (SPEC section 3).

::

    request ── policy? ──no──────────────────────────────► forward (uncached)
                 │yes
                 ├─ no-store ───────────────────────────► forward, X-Cache: BYPASS
                 ├─ stored and fresh ───────────────────► hits.serve, X-Cache: HIT
                 ├─ stored, study count unchanged ──────► hits.serve, X-Cache: REVALIDATED
                 ├─ stored, upstream failing ───────────► hits.serve, X-Cache: STALE
                 ├─ Range ── fill the whole entry ──────► its range, X-Cache: MISS | BYPASS
                 └─ otherwise ── join or start a Fill ──► stream, X-Cache: MISS | BYPASS

Hits are answered by :mod:`proxy.cache.hits`; a fill is checked against what the request
asked for (:func:`proxy.dicomweb.media.answers`) before it is committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Coroutine
from typing import Any

import aiohttp
from aiohttp import web

from proxy import compression, forward, metrics, responses
from proxy.cache.counts import StudyCounts
from proxy.cache.fill import Fill, FillReader
from proxy.cache.freshness import Freshness, parse_cache_control, request_directives
from proxy.cache.hits import HitServer
from proxy.cache.lock import POLL_SECONDS, KeyLocks
from proxy.cache.policy import Lifetime, Policy, decide
from proxy.cache.readahead import ReadAhead
from proxy.cache.store import Hit, Meta, NewBody, Store, etag_for, free_bytes
from proxy.dicomweb.media import answers
from proxy.dicomweb.rewrite import Rewriter, carries_urls
from proxy.errors import (
    ProxyError,
)
from proxy.exchange import Exchange
from proxy.metrics import Metrics
from proxy.settings import Settings
from proxy.upstream import Upstream

log = logging.getLogger("dicomweb_proxy")

# Below this much free disk the cache stops filling (and keeps serving).
MIN_FREE_BYTES = 64 * 1024**2
_CACHEABLE_METHODS = frozenset({"GET", "HEAD"})
_CLIENT_CONDITIONS = (
    "Range",
    "If-Range",
    "If-None-Match",
    "If-Modified-Since",
    "If-Match",
    "If-Unmodified-Since",
)


class Cache:
    """Store + single-flight fills + study revalidation, for one upstream."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        upstream: Upstream,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store = store
        self.upstream = upstream
        self.results: Counter[str] = Counter()
        self._fills: dict[str, Fill] = {}
        self.hits = HitServer(store, self.results)
        self.locks = KeyLocks(store.directory / "locks") if settings.workers > 1 else None
        self.readahead = (
            ReadAhead(settings.prefetch, upstream, self.warm)
            if settings.prefetch != "off"
            else None
        )
        self.counts = StudyCounts(upstream)
        self.freshness = Freshness(settings, store, self.counts)
        # Purges run off the event loop; meanwhile what they remove is not served.
        self._purging: set[str] = set()  # studies being purged
        self._purged_before = 0.0  # entries stored before a full purge began
        self._tasks: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.store.close()

    # -- request path ---------------------------------------------------------------

    def policy_for(self, request: web.Request, exchange: Exchange, partition: str) -> Policy | None:
        if request.method not in _CACHEABLE_METHODS:
            return None
        return decide(
            exchange.resource,
            path=exchange.relative_path,
            query=request.query.items(),
            accept=request.headers.get("Accept"),
            partition=partition,
            upstream=self.settings.upstream_url,
            qido_ttl=self.settings.qido_ttl,
        )

    async def handle(
        self, request: web.Request, exchange: Exchange, policy: Policy
    ) -> web.StreamResponse:
        directives = request_directives(request)
        if "no-store" in directives:
            return await self._bypass(request, exchange)
        hit = None if "no-cache" in directives else self._lookup(policy.key, policy.study)
        if hit is not None:
            verdict = await self.freshness.verdict(policy, hit)
            if verdict != "expired":
                served = await self.serve_hit(request, exchange, hit, verdict)
                if served is not None:
                    return served
        if request.method == "HEAD":
            return await self._bypass(request, exchange)
        result = "bypass" if "no-cache" in directives else "miss"
        if "Range" in request.headers:
            return await self._fill_then_serve(request, exchange, policy, hit, result)
        return await self._serve_fill(request, exchange, policy, hit, result)

    async def _fill_then_serve(
        self,
        request: web.Request,
        exchange: Exchange,
        policy: Policy,
        expired: Hit | None,
        result: str,
    ) -> web.StreamResponse:
        """SPEC section 3: a miss with ``Range`` fills the whole entry, then answers the
        range from it, so no byte of it ever crosses the upstream twice.  An answer the
        cache did not keep (an error, a body not storable, an expired entry the fill
        could not replace) is asked for as it was."""
        await self.warm(exchange, policy, refill=True)
        stored = self._lookup(policy.key, policy.study)
        if stored is None or (expired is not None and stored.path == expired.path):
            return await self._bypass(request, exchange)
        served = await self.serve_hit(request, exchange, stored, result)
        return served if served is not None else await self._bypass(request, exchange)

    async def _bypass(self, request: web.Request, exchange: Exchange) -> web.StreamResponse:
        self.results["bypass"] += 1
        return await forward.forward(
            request, exchange, self.upstream, self.settings.max_body, x_cache="BYPASS"
        )

    # -- hits ---------------------------------------------------------------------------

    async def serve_hit(
        self, request: web.Request, exchange: Exchange, hit: Hit, result: str
    ) -> web.StreamResponse | None:
        """Answer from a stored entry (:mod:`proxy.cache.hits`); None when it is gone."""
        return await self.hits.serve(request, exchange, hit, result)

    # -- misses ---------------------------------------------------------------------------

    async def _serve_fill(
        self,
        request: web.Request,
        exchange: Exchange,
        policy: Policy,
        stale: Hit | None,
        result: str,
    ) -> web.StreamResponse:
        claimed = await self._claim(policy.key)
        if isinstance(claimed, Hit):
            served = await self.serve_hit(request, exchange, claimed, "hit")
            if served is not None:
                return served
            claimed = None  # evicted meanwhile: fill it again
        if isinstance(claimed, Fill) and claimed.spilled:
            # The disk filled up under that fill: it cannot replay its start to a newcomer.
            return await forward.forward(
                request, exchange, self.upstream, 0, x_cache=result.upper()
            )
        if isinstance(claimed, Fill):
            fill = claimed
        elif free_bytes(self.store.tmp) < MIN_FREE_BYTES:
            KeyLocks.release(claimed)
            return await forward.forward(
                request, exchange, self.upstream, 0, x_cache=result.upper()
            )
        else:
            fill = self._start_fill(exchange, policy, claimed)
        if self.readahead is not None and self.readahead.should_start(exchange, policy):
            self._spawn(self.readahead.run(exchange, policy))
        reader = fill.reader()
        try:
            return await self._answer(request, exchange, fill, reader, stale, result)
        finally:
            reader.close()  # also when the client went away mid-body

    async def _answer(
        self,
        request: web.Request,
        exchange: Exchange,
        fill: Fill,
        reader: FillReader,
        stale: Hit | None,
        result: str,
    ) -> web.StreamResponse:
        """Stream a fill to the client, or a stale entry when the upstream failed."""
        await fill.headers_ready.wait()
        if stale is not None and self.freshness.may_serve_stale(fill, stale):
            served = await self.serve_hit(request, exchange, stale, "stale")
            if served is not None:
                return served
        if fill.error is not None and not fill.status:
            raise fill.error
        self.results[result] += 1
        await fill.parts_judged.wait()
        first_part_urls = fill.part_urls is None or fill.part_urls.first is not False
        response = responses.start_response(
            request,
            fill.status,
            fill.headers,
            exchange.rewriter,
            request_id=exchange.request_id,
            x_cache=result.upper(),
            part_urls=first_part_urls,
        )
        await response.prepare(request)
        await responses.relay(request, response, reader.chunks(), exchange.rewriter)
        return response

    async def warm(self, exchange: Exchange, policy: Policy, *, refill: bool = False) -> None:
        """Fill an entry with no client waiting (read-ahead, ranges); joins a fill under
        way.  Unless ``refill``, an entry already stored is left as it is."""
        if not refill and self._lookup(policy.key, policy.study) is not None:
            return
        claimed = await self._claim(policy.key)
        if isinstance(claimed, Hit):  # another worker filled it meanwhile: it is fresh
            return
        if isinstance(claimed, Fill):
            await claimed.finished.wait()
        elif free_bytes(self.store.tmp) < MIN_FREE_BYTES:
            KeyLocks.release(claimed)
        else:
            await self._start_fill(exchange, policy, claimed).finished.wait()

    async def _claim(self, key: str) -> Fill | Hit | int | None:
        """Single flight: join this process's fill for ``key``; with ``--workers``, wait
        while another process fills it and serve its entry.  Otherwise the caller fills,
        holding the cross-process lock (an fd) if there is one."""
        waited, deadline = False, time.monotonic() + self.settings.upstream_timeout
        while True:
            fill = self._fills.get(key)
            if fill is not None or self.locks is None:
                return fill
            lock = self.locks.try_acquire(key)
            if lock is not None:
                hit = self.store.get(key) if waited else None
                if hit is None:
                    return lock
                KeyLocks.release(lock)
                return hit
            if time.monotonic() > deadline:
                return None  # a stuck peer must not stall this request: fill unlocked
            waited = True
            await asyncio.sleep(POLL_SECONDS)

    def _start_fill(self, exchange: Exchange, policy: Policy, lock: int | None) -> Fill:
        """The fill is registered before any await, so concurrent misses for the key in
        this process join it instead of asking the upstream again."""
        fill = Fill(self.store.temp_path(), exchange.rewriter.pattern)
        self._fills[policy.key] = fill
        count = self.counts.task(policy.study) if policy.lifetime is Lifetime.STUDY else None

        def open_response() -> contextlib.AbstractAsyncContextManager[aiohttp.ClientResponse]:
            headers = exchange.upstream_headers.copy()
            # A fill stores the whole representation, whatever part or condition the
            # client asked for (answered from the entry once it is stored).
            for name in _CLIENT_CONDITIONS:
                headers.popall(name, None)
            return self.upstream.request("GET", exchange.upstream_url, headers)

        async def commit(done: Fill) -> None:
            # Leave the registry only once the entry is in the store (or discarded):
            # a request arriving in between must find one or the other.
            try:
                if self._answers_request(done, exchange) and await self._commit(
                    done, policy, count
                ):
                    self._spawn(self._prepare_gzip(policy.key, exchange.rewriter))
            finally:
                done.discard()  # a no-op once the store adopted the file
                del self._fills[policy.key]
                KeyLocks.release(lock)
                done.finished.set()

        self._spawn(fill.run(open_response, commit))
        return fill

    def _answers_request(self, fill: Fill, exchange: Exchange) -> bool:
        """SPEC section 3: only the representation asked for is stored.  A complete 200
        that is something else (a gateway's login page or text/plain error, JSON for a
        multipart request) or in a coding the proxy cannot decode is relayed once,
        logged and counted, never stored."""
        if fill.status != 200 or fill.complete is not True:
            return True  # not storable anyway, and not a surprise worth a warning
        content_type = fill.headers.get("Content-Type", "")
        if "Content-Encoding" in fill.headers:
            reason = "undecodable"
        elif answers(content_type, asked_for(exchange), exchange.resource.default_answers):
            return True
        else:
            reason = "unexpected_type"
        log.warning(
            "not cached: the upstream answered %s with %s (%s) [%s]",
            exchange.resource.transaction.value,
            content_type.split(";", 1)[0] or "no Content-Type",
            reason,
            exchange.request_id,
        )
        metrics.cache_not_stored(self.metrics, reason)
        return False

    async def _commit(self, fill: Fill, policy: Policy, count: asyncio.Task[int] | None) -> bool:
        """Step 4 of the fill: adopt the file only if it is a complete, storable 200."""
        instance_count = None
        if count is not None:
            with contextlib.suppress(ProxyError, ValueError):
                instance_count = await count
        if not _storable(fill) or (count is not None and instance_count is None):
            fill.discard()
            return False
        meta = Meta(
            status=fill.status,
            headers=Meta.keep_headers(fill.headers),
            stored_at=time.time(),
            size=fill.written,
            etag=etag_for(fill.temp_path),
            rewrite=carries_urls(fill.headers.get("Content-Type", "")),
            count=instance_count,
            part_urls=fill.part_urls is not None and fill.part_urls.any,
        )
        committed = self.store.commit(policy.key, NewBody(fill.temp_path, meta), policy.tag)
        if not committed:
            fill.discard()
        if instance_count is not None:
            self.freshness.record_count(policy, instance_count)
        return committed

    async def _prepare_gzip(self, key: str, rewriter: Rewriter) -> None:
        """The gzip variant of a JSON/XML entry just filled, for the public base of the
        request that filled it: the first hit of a gzip-accepting client finds it made."""
        hit = self.store.get(key)
        if hit is None or not compression.compressible(hit.meta.headers.get("Content-Type", "")):
            return
        handle = hit.open()
        if handle is not None:
            with handle:
                await self.hits.variants.body(hit, handle, rewriter, compress=True)

    # -- invalidation and admin --------------------------------------------------------

    async def studies_changed(self, studies: set[str]) -> None:
        """A STOW stored into these studies: drop their study/series entries and finality."""
        self.store.purge([f"s:{uid}" for uid in studies])

    def _lookup(self, key: str, study: str | None) -> Hit | None:
        """The stored entry, unless a purge under way removes it."""
        if study is not None and study in self._purging:
            return None
        hit = self.store.get(key)
        if hit is not None and hit.meta.stored_at < self._purged_before:
            return None
        return hit

    async def purge_all(self) -> int:
        """Every entry.  Deleting thousands of files takes seconds, so it runs in a
        thread; from the moment it is asked, nothing stored before it is served."""
        self._purged_before = time.time()
        self.store.forget_all()
        return await asyncio.to_thread(self.store.delete)

    async def purge_study(self, study: str) -> int:
        """One study's entries, off the event loop; not served meanwhile."""
        self._purging.add(study)
        self.store.forget_all()
        try:
            return await asyncio.to_thread(self.store.delete, [f"s:{study}", f"i:{study}"])
        finally:
            self._purging.discard(study)

    def stats(self) -> dict[str, int]:
        """Entries, bytes and this process's hits/misses (the status page and /metrics)."""
        hits = self.results["hit"] + self.results["revalidated"] + self.results["stale"]
        misses = self.results["miss"] + self.results["bypass"]
        return {
            **self.store.stats(),
            "size_limit": self.store.size_limit,
            "hits": hits,
            "misses": misses,
        }

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def asked_for(exchange: Exchange) -> str | None:
    """The media ranges asked for: the ``accept`` query parameter overrides the
    ``Accept`` header (PS3.18 section 8.3.3.1)."""
    given = exchange.upstream_url.query.getall("accept", [])
    return ",".join(given) if given else exchange.client_headers.get("Accept")


def _storable(fill: Fill) -> bool:
    """RFC 9111 section 3: only complete 200s the upstream did not mark private/no-store."""
    directives = parse_cache_control(fill.headers.get("Cache-Control", ""))
    return (
        fill.status == 200
        and fill.complete is True
        and fill.error is None
        and not directives & {"no-store", "private"}
    )
