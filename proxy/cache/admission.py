"""What a finished fill may leave in the store (SPEC section 3, RFC 9111 section 3).

Only a complete 200 that the upstream did not mark ``private``/``no-store`` and that is
the representation the request asked for is stored; anything else is relayed to the
clients that were reading it, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from proxy import metrics
from proxy.cache.fill import Fill
from proxy.cache.freshness import Freshness, parse_cache_control
from proxy.cache.policy import Policy
from proxy.cache.store import Meta, NewBody, Store, etag_for
from proxy.dicomweb.media import answers
from proxy.dicomweb.rewrite import carries_urls
from proxy.errors import ProxyError
from proxy.exchange import Exchange
from proxy.metrics import Metrics

log = logging.getLogger("dicomweb_proxy")


class Admission:
    """Step 4 of a fill (:mod:`proxy.cache.fill`): into the store, or not."""

    def __init__(
        self,
        store: Store,
        freshness: Freshness,
        counts: Metrics | None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.freshness = freshness
        self.counts = counts
        self.clock = clock  # stamps Meta.stored_at: the clock freshness reads ages on

    async def admit(
        self, fill: Fill, exchange: Exchange, policy: Policy, count: asyncio.Task[int] | None
    ) -> bool:
        """Adopt the file only if it answers the request and is a complete, storable 200;
        a study-level entry also needs its study's instance count (``count``)."""
        if not answers_request(fill, exchange, self.counts):
            return False
        instance_count = None
        if count is not None:
            with contextlib.suppress(ProxyError, ValueError):
                instance_count = await count
        if not storable(fill) or (count is not None and instance_count is None):
            fill.discard()
            return False
        new = NewBody(fill.temp_path, meta_for(fill, instance_count, self.clock()))
        committed = self.store.commit(policy.key, new, policy.tag)
        if not committed:
            fill.discard()
        if instance_count is not None:
            self.freshness.record_count(policy, instance_count)
        return committed


def answers_request(fill: Fill, exchange: Exchange, counts: Metrics | None) -> bool:
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
    metrics.cache_not_stored(counts, reason)
    return False


def asked_for(exchange: Exchange) -> str | None:
    """The media ranges asked for: the ``accept`` query parameter overrides the
    ``Accept`` header (PS3.18 section 8.3.3.1)."""
    given = exchange.upstream_url.query.getall("accept", [])
    return ",".join(given) if given else exchange.client_headers.get("Accept")


def storable(fill: Fill) -> bool:
    """RFC 9111 section 3: only complete 200s the upstream did not mark private/no-store."""
    directives = parse_cache_control(fill.headers.get("Cache-Control", ""))
    return (
        fill.status == 200
        and fill.complete is True
        and fill.error is None
        and not directives & {"no-store", "private"}
    )


def meta_for(fill: Fill, instance_count: int | None, stored_at: float) -> Meta:
    """The index entry of a storable fill's body."""
    return Meta(
        status=fill.status,
        headers=Meta.keep_headers(fill.headers),
        stored_at=stored_at,
        size=fill.written,
        etag=etag_for(fill.temp_path),
        rewrite=carries_urls(fill.headers.get("Content-Type", "")),
        count=instance_count,
        part_urls=fill.part_urls is not None and fill.part_urls.any,
    )
