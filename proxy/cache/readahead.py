"""``--prefetch series|study``: on an instance miss, fetch its siblings in the background.

A viewer reading a series slice by slice asks for one instance (or frame) after the
other, each a round trip over a slow link.  On the first miss below a SOP Instance UID,
the proxy lists the other instances of the series (or study) with one QIDO-RS query
(PS3.18 10.6.1.2) and fills the same resource for each of them — the same suffix
(``frames/1``, ``metadata``, nothing), the same ``Accept`` and query — nearest
InstanceNumber first, a few at a time, so the next slices are cached before they are
asked for.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from yarl import URL

from proxy.cache.policy import Policy
from proxy.dicomweb.uri import classify
from proxy.errors import ProxyError
from proxy.exchange import Exchange
from proxy.upstream import Upstream, read_bounded

log = logging.getLogger("dicomweb_proxy")

CONCURRENCY = 4
# A series or study is read ahead at most once in this many seconds.
REPEAT_AFTER = 600.0
_MAX_LISTING = 16 * 1024 * 1024
_SOP_INSTANCE_UID, _SERIES_UID, _INSTANCE_NUMBER = "00080018", "0020000E", "00200013"

Warm = Callable[[Exchange, Policy], Coroutine[Any, Any, None]]


@dataclasses.dataclass(frozen=True)
class Sibling:
    series: str
    instance: str
    number: int


class ReadAhead:
    def __init__(self, scope: str, upstream: Upstream, warm: Warm) -> None:
        self.scope = scope
        self.upstream = upstream
        self._warm = warm
        self._started: dict[tuple[str, ...], float] = {}
        self._slots = asyncio.Semaphore(CONCURRENCY)

    def should_start(self, exchange: Exchange, policy: Policy) -> bool:
        """True once per series/study and representation within REPEAT_AFTER."""
        resource = exchange.resource
        if resource.instance is None or resource.study is None:
            return False
        group = resource.series if self.scope == "series" else resource.study
        shape = exchange.relative_path.split(resource.instance, 1)[1]
        marker = (group or "", shape, *policy.with_path("").parts)
        now = time.monotonic()
        if now - self._started.get(marker, -REPEAT_AFTER) < REPEAT_AFTER:
            return False
        self._started[marker] = now
        return True

    async def run(self, exchange: Exchange, policy: Policy) -> None:
        """List the siblings, then warm each, nearest first, CONCURRENCY at a time."""
        try:
            siblings = await self._list(exchange)
        except (ProxyError, ValueError, KeyError, IndexError) as exc:
            log.info("read-ahead skipped: cannot list siblings (%s)", type(exc).__name__)
            return
        origin = next((s for s in siblings if s.instance == exchange.resource.instance), None)
        siblings.sort(key=lambda s: abs(s.number - (origin.number if origin else 0)))
        others = [s for s in siblings if s is not origin]
        await asyncio.gather(*(self._one(exchange, policy, s) for s in others))

    async def _one(self, exchange: Exchange, policy: Policy, sibling: Sibling) -> None:
        async with self._slots:
            twin = sibling_exchange(exchange, sibling)
            await self._warm(twin, policy.with_path(twin.relative_path))

    async def _list(self, exchange: Exchange) -> list[Sibling]:
        resource = exchange.resource
        path = f"studies/{resource.study}"
        if self.scope == "series":
            path += f"/series/{resource.series}"
        url = (self.upstream.base / path / "instances").with_query(
            [("includefield", _SERIES_UID), ("includefield", _INSTANCE_NUMBER)]
        )
        headers = exchange.upstream_headers.copy()
        headers["Accept"] = "application/dicom+json"
        async with self.upstream.request("GET", url, headers) as response:
            if response.status != 200:
                return []
            found = json.loads(await read_bounded(response, _MAX_LISTING, "instance list"))
        return [_sibling(item) for item in found]


def _sibling(item: dict[str, Any]) -> Sibling:
    number = item.get(_INSTANCE_NUMBER, {}).get("Value", [0])[0]
    return Sibling(
        series=str(item[_SERIES_UID]["Value"][0]),
        instance=str(item[_SOP_INSTANCE_UID]["Value"][0]),
        number=int(number or 0),
    )


def sibling_exchange(exchange: Exchange, sibling: Sibling) -> Exchange:
    """The same request, addressed to another instance (and maybe another series)."""
    resource = exchange.resource
    segments = exchange.relative_path.split("/")
    for index, segment in enumerate(segments[:-1]):
        if segment == "series" and segments[index + 1] == resource.series:
            segments[index + 1] = sibling.series
        if segment == "instances" and segments[index + 1] == resource.instance:
            segments[index + 1] = sibling.instance
    relative = "/".join(segments)
    base_path = exchange.upstream_url.raw_path[: -len(exchange.relative_path) or None]
    url = exchange.upstream_url.with_path(base_path + relative, encoded=True)
    url = (
        URL(f"{url}?{exchange.upstream_url.raw_query_string}", encoded=True)
        if (exchange.upstream_url.raw_query_string)
        else url
    )
    return dataclasses.replace(
        exchange,
        relative_path=relative,
        upstream_url=url,
        resource=classify(relative, "GET"),
    )
