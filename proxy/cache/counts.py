"""Study instance counts: the QIDO-RS query that revalidates study-level entries.

A study's metadata and series listings stay valid while its number of instances
(NumberOfStudyRelatedInstances, 0020,1208) is unchanged (SPEC section 3), so the cache
asks the upstream for that one attribute (PS3.18 10.6.1.2) instead of the body again.
"""

from __future__ import annotations

import asyncio
import json

from proxy.errors import UpstreamInvalid
from proxy.upstream import Upstream, read_bounded

_MAX_ANSWER = 1024 * 1024


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
            body = await read_bounded(response, _MAX_ANSWER, "count query answer")
        return instance_count(body)


def instance_count(body: bytes) -> int:
    """NumberOfStudyRelatedInstances (0020,1208) of the first match; an answer without
    it (an upstream that ignores ``includefield``) is invalid, not a crash."""
    try:
        found = json.loads(body)
        return int(found[0]["00201208"]["Value"][0]) if found else 0
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise UpstreamInvalid("the study count query answer has no instance count") from exc
