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

Hits are answered by :mod:`proxy.cache.hits` once :mod:`proxy.cache.freshness` allows;
a miss claims its key (:mod:`proxy.cache.flight`) and reads a :mod:`proxy.cache.fill`,
committed to the store only as :mod:`proxy.cache.admission` allows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

from proxy import forward, responses
from proxy.cache import express
from proxy.cache.admission import Admission
from proxy.cache.fill import Fill, FillReader
from proxy.cache.flight import Join, Lead, SingleFlight, Stored
from proxy.cache.freshness import Freshness, StudyCounts, request_directives
from proxy.cache.hits import HitServer
from proxy.cache.lock import KeyLocks
from proxy.cache.policy import Lifetime, Policy, decide
from proxy.cache.purge import Purges
from proxy.cache.readahead import ReadAhead
from proxy.cache.store import Hit, Store, free_bytes
from proxy.exchange import Exchange
from proxy.metrics import Metrics
from proxy.settings import Settings
from proxy.upstream import Upstream

# Below this much free disk the cache stops filling (and keeps serving).
MIN_FREE_BYTES = 64 * 1024**2
_CACHEABLE_METHODS = frozenset({"GET", "HEAD"})


class Cache:
    """Store + single-flight fills + study revalidation, for one upstream."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        upstream: Upstream,
        metrics: Metrics | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``clock``: wall-clock seconds, for entry ages (TTLs, finality, stale-if-error)."""
        self.settings = settings
        self.metrics = metrics
        self.store = store
        self.upstream = upstream
        self.hits = HitServer(store)
        self.express: express.Lane | None = None  # set by the app when it can answer
        locks = KeyLocks(store.directory / "locks") if settings.workers > 1 else None
        self.flights = SingleFlight(store, locks, settings.upstream_timeout)
        self._fills = self.flights.fills  # under way; tests wait until none is left
        self.readahead = (
            ReadAhead(settings.prefetch, upstream, self.warm)
            if settings.prefetch != "off"
            else None
        )
        self.counts = StudyCounts(upstream)
        self.freshness = Freshness(settings, store, self.counts, clock=clock)
        self.admission = Admission(store, self.freshness, metrics, clock=clock)
        # Purges run off the event loop; what they remove is not served meanwhile.
        self.purges = Purges(store, clock=clock)
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
                served = await self.hits.serve(request, exchange, hit, verdict)
                if served is not None:
                    if verdict == "hit" and self.express is not None:
                        await express.offer(self.express, request, exchange, policy, hit, served)
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
        served = await self.hits.serve(request, exchange, stored, result)
        return served if served is not None else await self._bypass(request, exchange)

    async def _bypass(self, request: web.Request, exchange: Exchange) -> web.StreamResponse:
        return await forward.forward(
            request, exchange, self.upstream, self.settings.max_body, x_cache="BYPASS"
        )

    # -- misses ---------------------------------------------------------------------------

    async def _serve_fill(
        self,
        request: web.Request,
        exchange: Exchange,
        policy: Policy,
        stale: Hit | None,
        result: str,
    ) -> web.StreamResponse:
        claim = await self.flights.claim(policy.key)
        if isinstance(claim, Stored):
            served = await self.hits.serve(request, exchange, claim.hit, "hit")
            if served is not None:
                return served
            claim = Lead()  # evicted meanwhile: fill it again
        fill = self._fill_for(exchange, policy, claim)
        if fill is None or fill.spilled:
            # No room on the cache disk, or the disk filled up under that fill (which
            # cannot replay its start to a newcomer): pass the request through.
            return await forward.forward(
                request, exchange, self.upstream, 0, x_cache=result.upper()
            )
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
            served = await self.hits.serve(request, exchange, stale, "stale")
            if served is not None:
                return served
        if fill.error is not None and not fill.status:
            raise fill.error
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
        claim = await self.flights.claim(policy.key)
        if isinstance(claim, Stored):  # another worker filled it meanwhile: it is fresh
            return
        fill = self._fill_for(exchange, policy, claim)
        if fill is not None:
            await fill.finished.wait()

    def _fill_for(self, exchange: Exchange, policy: Policy, claim: Join | Lead) -> Fill | None:
        """The fill to read: the one under way, or a new one; None when the cache disk
        has no room for one (MIN_FREE_BYTES)."""
        if isinstance(claim, Join):
            return claim.fill
        if free_bytes(self.store.tmp) < MIN_FREE_BYTES:
            KeyLocks.release(claim.lock)
            return None
        return self._start_fill(exchange, policy, claim.lock)

    def _start_fill(self, exchange: Exchange, policy: Policy, lock: int | None) -> Fill:
        fill = Fill(self.store.temp_path(), exchange.rewriter.pattern)
        fill.register(self._fills, policy.key, lock)
        count = self.counts.task(policy.study) if policy.lifetime is Lifetime.STUDY else None
        self._spawn(self._fill(fill, exchange, policy, count))
        return fill

    async def _fill(
        self, fill: Fill, exchange: Exchange, policy: Policy, count: asyncio.Task[int] | None
    ) -> None:
        """The steps of :mod:`proxy.cache.fill`, the store's in the middle."""
        await fill.run(self.upstream, exchange.upstream_url, exchange.upstream_headers)
        try:
            if await self.admission.admit(fill, exchange, policy, count):
                self._spawn(
                    self.hits.variants.prepare_gzip(self.store, policy.key, exchange.rewriter)
                )
        finally:
            fill.finish()

    # -- invalidation and admin --------------------------------------------------------

    async def studies_changed(self, studies: set[str]) -> None:
        """A STOW stored into these studies: drop their study/series entries and finality."""
        self.store.purge([f"s:{uid}" for uid in studies])

    def fresh_hit(self, policy: Policy) -> Hit | None:
        """The entry of ``policy`` when it may be answered now as a plain HIT (asked
        before each answer of the express lane, :mod:`proxy.cache.express`)."""
        hit = self._lookup(policy.key, policy.study)
        return hit if hit is not None and self.freshness.fresh_now(policy, hit) else None

    def _lookup(self, key: str, study: str | None) -> Hit | None:
        return self.purges.lookup(key, study)

    async def purge_all(self) -> int:
        return await self.purges.everything()

    async def purge_study(self, study: str) -> int:
        return await self.purges.study(study)

    def stats(self) -> dict[str, int]:
        """Entries, bytes and this process's hits/misses (the status page and /metrics).

        Hits and misses are the request metrics' (``dicomweb_proxy_cache_requests_total``,
        counted once per client request from its ``X-Cache``, :mod:`proxy.logs`): this
        process's, not the sum over ``--workers``."""
        results = self.metrics.own_cache_results() if self.metrics is not None else {}
        hits = sum(results.get(name, 0) for name in ("hit", "revalidated", "stale"))
        misses = sum(results.get(name, 0) for name in ("miss", "bypass"))
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
