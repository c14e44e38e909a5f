"""Freshness and stale rules (SPEC section 3): may a stored entry be served as it is?

- immutable entries (instances, frames, bulk data) are always fresh;
- QIDO-RS answers are fresh for ``--qido-ttl``;
- study-level entries (metadata, series listings) for ``--metadata-ttl`` since their
  study's instance count was last checked, then revalidated by that count
  (:class:`StudyCounts`): unchanged, the entry is served again; a study unchanged for
  ``--finalized-after`` is final and never asked about again;
- an expired entry is served stale for ``--stale-if-error`` past its expiry while the
  upstream fails (RFC 5861 section 4).

The count is NumberOfStudyRelatedInstances (0020,1208), asked of the upstream with one
QIDO-RS query for that attribute (PS3.18 10.6.1.2) instead of the body again.

Every age is read on the cache's clock (wall-clock seconds, ``time.time`` unless the
app was given another), the clock that stamps ``Meta.stored_at``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Literal

from aiohttp import web

from proxy.cache.fill import Fill
from proxy.cache.policy import Lifetime, Policy
from proxy.cache.store import Hit, Store, StudyState
from proxy.errors import UpstreamError, UpstreamInvalid, UpstreamTimeout
from proxy.settings import Settings
from proxy.upstream import Upstream, read_bounded

Verdict = Literal["hit", "revalidated", "stale", "expired"]
_MAX_COUNT_ANSWER = 1024 * 1024


class Freshness:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        counts: StudyCounts,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.counts = counts
        self.clock = clock

    async def verdict(self, policy: Policy, hit: Hit) -> Verdict:
        """``hit``, ``revalidated``, ``stale`` or ``expired``."""
        if self.fresh_now(policy, hit):
            return "hit"
        if policy.lifetime is Lifetime.QIDO:
            return "expired"
        return await self._study_verdict(policy, hit)

    def fresh_now(self, policy: Policy, hit: Hit) -> bool:
        """Servable as a plain HIT without asking the upstream: immutable, within the
        QIDO TTL, or a study whose count was checked recently or is final."""
        if policy.lifetime is Lifetime.IMMUTABLE:
            return True
        if policy.lifetime is Lifetime.QIDO:
            return self.clock() < hit.meta.stored_at + self.settings.qido_ttl
        state = self.store.study_state(self._state_key(policy))
        return self._still_fresh(state, hit, self.clock())

    async def _study_verdict(self, policy: Policy, hit: Hit) -> Verdict:
        assert policy.study is not None  # study-level policies always carry the UID
        state = self.store.study_state(self._state_key(policy))
        now = self.clock()
        try:
            count = await self.counts.count(policy.study)
        except (UpstreamError, UpstreamTimeout):
            expired_at = state.checked_at if state else hit.meta.stored_at
            expired_at += self.settings.metadata_ttl
            return "stale" if now - expired_at <= self.settings.stale_if_error else "expired"
        self.record_count(policy, count)
        return "revalidated" if count == hit.meta.count else "expired"

    def _still_fresh(self, state: StudyState | None, hit: Hit, now: float) -> bool:
        if state is None or state.count != hit.meta.count:
            return False
        return state.final or now - state.checked_at < self.settings.metadata_ttl

    def may_serve_stale(self, fill: Fill, stale: Hit) -> bool:
        """Upstream unreachable, timed out or 5xx: an expired entry is better than none."""
        failed = (fill.error is not None and not fill.status) or fill.status >= 500
        age_past_expiry = self.clock() - stale.meta.stored_at - self._ttl_of(stale)
        return failed and age_past_expiry <= self.settings.stale_if_error

    def _ttl_of(self, hit: Hit) -> float:
        return self.settings.metadata_ttl if hit.meta.count is not None else self.settings.qido_ttl

    def record_count(self, policy: Policy, count: int) -> None:
        """A study unchanged for --finalized-after is final (SPEC section 3)."""
        key, now = self._state_key(policy), self.clock()
        state = self.store.study_state(key)
        if state is None or state.count != count:
            state = StudyState(count=count, since=now, checked_at=now)
        else:
            final = now - state.since >= self.settings.finalized_after
            state = replace(state, checked_at=now, final=final)
        self.store.set_study_state(key, state, tag=f"s:{policy.study}")

    def _state_key(self, policy: Policy) -> str:
        return f"state|{self.settings.upstream_url}|{policy.partition}|{policy.study}"


def request_directives(request: web.Request) -> set[str]:
    """The client's Cache-Control directives (RFC 9111 section 5.2.1), ``Pragma:
    no-cache`` counted as ``no-cache`` (section 5.4)."""
    directives = parse_cache_control(request.headers.get("Cache-Control", ""))
    if request.headers.get("Pragma", "").lower() == "no-cache":
        directives.add("no-cache")
    return directives


def parse_cache_control(value: str) -> set[str]:
    """The directive names of a Cache-Control value, lower-cased, arguments dropped."""
    return {item.split("=", 1)[0].strip().lower() for item in value.split(",") if item.strip()}


# -- the instance counts ---------------------------------------------------------------


class StudyCounts:
    """One count query in flight per study, however many entries ask."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self._tasks: dict[str, asyncio.Task[int]] = {}

    def task(self, study: str | None) -> asyncio.Task[int]:
        """The query under way for ``study``, or a new one."""
        assert study is not None  # study-level policies always carry the UID
        task = self._tasks.get(study)
        if task is None or task.done():
            task = asyncio.ensure_future(self._query(study))
            self._tasks[study] = task
        return task

    async def count(self, study: str) -> int:
        """The study's instance count; a caller that goes away leaves the query running."""
        return await asyncio.shield(self.task(study))

    async def _query(self, study: str) -> int:
        url = (self.upstream.base / "studies").with_query(
            StudyInstanceUID=study, includefield="00201208"
        )
        headers = {"Accept": "application/dicom+json"}
        async with self.upstream.request("GET", url, headers) as response:
            if response.status >= 500:
                raise UpstreamInvalid(f"count query answered {response.status}")
            if response.status == 204 or response.status == 404:
                return 0
            if response.status != 200:
                raise UpstreamInvalid(f"count query answered {response.status}")
            body = await read_bounded(response, _MAX_COUNT_ANSWER, "count query answer")
        return instance_count(body)


def instance_count(body: bytes) -> int:
    """NumberOfStudyRelatedInstances (0020,1208) of the first match; an answer without
    it (an upstream that ignores ``includefield``) is invalid, not a crash."""
    try:
        found = json.loads(body)
        return int(found[0]["00201208"]["Value"][0]) if found else 0
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise UpstreamInvalid("the study count query answer has no instance count") from exc
