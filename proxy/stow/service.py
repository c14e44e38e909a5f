"""One STOW-RS request from spool to merged response, and the dead-letter service.

The steps (SPEC section 5):

1. spool the whole client body, its parts one after another in one file, identifying
   every instance;
2. plan batches within ``--stow-max-instances`` / ``--stow-max-bytes``;
3. send them, ``--stow-concurrency`` at a time, with retries and 413 splitting;
4. move instances that failed for a fixable reason into the dead letter;
5. merge every batch's answer into one response (PS3.18 Table 10.5.3-1).

The spool directory is removed whatever happens, a client disconnect included.

:class:`DeadLetterService` is what operators do with the dead letter afterwards (list,
show, replay, drop), for the ``/admin/dead-letter`` routes, the status page and the CLI.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from yarl import URL

from proxy import headers as hdrs
from proxy.dicomweb.rewrite import Rewriter
from proxy.dicomweb.stow_response import Failed, StowResponse, is_content_rejection, merge
from proxy.metrics import Metrics, dead_letter_entries
from proxy.settings import Settings
from proxy.state import StudiesChanged
from proxy.stow.batch import Batch, plan
from proxy.stow.dead_letter import DeadLetter, new_record
from proxy.stow.parts import Kind
from proxy.stow.send import RETRYABLE, Sender, SendPolicy, Sent
from proxy.stow.spool import spool
from proxy.upstream import Upstream

log = logging.getLogger("dicomweb_proxy")

# Failures an operator can fix (credentials, upstream limits, upstream disk).
OPERATOR_FIXABLE = frozenset({401, 403, 413, 507})


@dataclass(frozen=True)
class StowRequest:
    """What the STOW service needs from one client request."""

    request_id: str
    target: str  # "studies" or "studies/{uid}"
    url: URL
    headers: Mapping[str, str]
    rewriter: Rewriter | None


@dataclass(frozen=True)
class Outcome:
    response: StowResponse
    warnings: tuple[str, ...]
    stored_studies: frozenset[str]
    dead_lettered: int
    # Metric outcomes (SPEC section 6): batches stored/partial/failed/retried/split.
    batches: Counter[str] = field(default_factory=Counter)


async def store(
    chunks: AsyncIterable[bytes],
    content_type: str,
    request: StowRequest,
    settings: Settings,
    upstream: Upstream,
) -> Outcome:
    directory = settings.spool_path / uuid.uuid4().hex
    started = time.perf_counter()
    try:
        spooled = await spool(chunks, content_type, directory)
        spooled_at = time.perf_counter()
        batches = plan(
            spooled.kind,
            spooled.instances,
            settings.stow_max_instances,
            settings.stow_max_bytes,
        )
        sender = Sender(
            upstream,
            request.url,
            request.headers,
            SendPolicy.from_settings(settings),
            request.rewriter,
            spooled.params,
        )
        sent = await sender.send_all(batches)
        log.debug(
            "STOW %d instances spooled in %.2f s, %d batches sent in %.2f s [%s]",
            len(spooled.instances),
            spooled_at - started,
            len(batches),
            time.perf_counter() - spooled_at,
            request.request_id,
        )
        kept = await keep_failures(sent, spooled.kind, request, settings)
    finally:
        # Synchronous on purpose: it must also run when the task is being cancelled.
        shutil.rmtree(directory, ignore_errors=True)
    outcome = _outcome(sent, spooled.rejected, request, kept)
    outcome.batches.update(tally_batches(sent, planned=len(batches)))
    return outcome


def _outcome(
    sent: Sequence[Sent], rejected: Sequence[Failed], request: StowRequest, kept: int
) -> Outcome:
    study_of = {i.sop.sop_instance: i.study for s in sent for i in s.batch.instances}
    base = request.rewriter.public_base if request.rewriter else ""
    response = merge(
        [s.report for s in sent],
        rejected,
        study_of=study_of,
        base_url=base,
    )
    stored = frozenset(
        study_of[item.sop_instance]
        for item in response.result.referenced
        if item.sop_instance in study_of
    )
    warnings = tuple(dict.fromkeys(w for s in sent for w in s.warnings))
    return Outcome(response, warnings, stored, kept)


def tally_batches(sent: Sequence[Sent], planned: int) -> Counter[str]:
    """Each upstream batch by outcome, plus every retry and every 413 split."""
    tally: Counter[str] = Counter()
    for batch_sent in sent:
        result = batch_sent.report.result
        if not result.failed:
            tally["stored"] += 1
        else:
            tally["partial" if result.referenced else "failed"] += 1
        tally["retried"] += batch_sent.attempts - 1
    tally["split"] += len(sent) - planned  # each split turns one batch into two
    return +tally


def should_keep(sent: Sent, reason: int) -> bool:
    """Dead-letter a failed instance unless the upstream rejected its content."""
    if is_content_rejection(reason):
        return False
    if sent.answered:
        return True
    status = sent.report.status
    return status is None or status in RETRYABLE or status in OPERATOR_FIXABLE


async def keep_failures(
    sent: Sequence[Sent], kind: Kind, request: StowRequest, settings: Settings
) -> int:
    """Move every instance :func:`should_keep` chooses into the dead letter."""
    dead_letter = DeadLetter(settings.dead_letter_path)
    loop = asyncio.get_running_loop()
    kept = 0
    for batch_sent in sent:
        by_uid = {i.sop.sop_instance: i for i in batch_sent.batch.instances}
        for failed in batch_sent.report.result.failed:
            instance = by_uid.get(failed.sop_instance)
            if instance is None or not should_keep(batch_sent, failed.reason):
                continue
            record = new_record(
                instance,
                kind,
                request_id=request.request_id,
                target=request.target,
                status=batch_sent.report.status,
                reason=failed.reason,
                attempts=batch_sent.attempts,
                detail=batch_sent.detail,
            )
            try:
                await loop.run_in_executor(None, dead_letter.keep, instance, kind, record)
            except OSError as exc:
                # Still in the client's FailedSOPSequence: reported, if not kept.
                log.error(
                    "STOW: could not keep a failed instance in the dead letter: %s [%s]",
                    exc.strerror,
                    request.request_id,
                )
                continue
            kept += 1
    return kept


# -- replay ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Replayed:
    id: str
    stored: bool
    study: str
    status: int | None
    reason: int | None


async def replay(
    entry_id: str, settings: Settings, upstream: Upstream, headers: Mapping[str, str]
) -> Replayed:
    """Send one entry again; drop it when stored, else record the new attempt.

    Idempotent against an upstream that already holds the instance: storing the same
    SOP Instance UID again is a success (PS3.18 10.5.3, Orthanc ``OverwriteInstances``).
    """
    dead_letter = DeadLetter(settings.dead_letter_path)
    instance, kind, target = dead_letter.instance(entry_id)
    url = upstream.base.with_path(upstream.base.path.rstrip("/") + "/" + target)
    sender = Sender(upstream, url, headers, SendPolicy.from_settings(settings))
    results = await sender.send(Batch(kind, (instance,)))
    referenced = any(r.result.referenced for r in (s.report for s in results))
    if referenced:
        dead_letter.drop(entry_id)
        return Replayed(entry_id, True, instance.study, results[-1].report.status, None)
    last = results[-1]
    reason = last.report.result.failed[0].reason if last.report.result.failed else None
    record = dead_letter.record(entry_id)
    dead_letter.update(
        entry_id,
        status=last.report.status,
        reason=reason,
        attempts=int(record["attempts"]) + last.attempts,
        detail=last.detail,
    )
    return Replayed(entry_id, False, instance.study, last.report.status, reason)


async def notify(studies_changed: Sequence[StudiesChanged], studies: set[str]) -> None:
    """Tell subscribers (the cache) which studies changed (SPEC section 3)."""
    if studies:
        for callback in studies_changed:
            await callback(set(studies))


# -- the dead-letter service ----------------------------------------------------------


class DeadLetterService:
    """The dead letter as operators work it (SPEC section 5): list, show, replay, drop.

    One service behind the ``/admin/dead-letter`` JSON routes, the status page's buttons
    and the ``dead-letter`` CLI.  Replaying needs ``upstream`` (the CLI lists, shows and
    drops without one).  A stored replay tells ``studies_changed`` (the app's list, which
    the cache joins once it is open); with ``metrics``, every replay and drop refreshes
    the dead-letter gauge.
    """

    def __init__(
        self,
        settings: Settings,
        upstream: Upstream | None = None,
        *,
        studies_changed: Sequence[StudiesChanged] = (),
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self._upstream = upstream
        self._studies_changed = studies_changed
        self._metrics = metrics
        self._store = DeadLetter(settings.dead_letter_path)

    async def entries(self) -> list[dict[str, Any]]:
        """Every entry's record: ``id``, ``time``, the UIDs, ``status``, ``reason``, ..."""
        return await asyncio.to_thread(self._store.records)

    async def entry(self, entry_id: str) -> dict[str, Any]:
        return await asyncio.to_thread(self._store.record, entry_id)

    async def replay(self, entry_id: str, request_id: str | None = None) -> Replayed:
        if self._upstream is None:
            raise RuntimeError("replaying a dead-letter entry needs an upstream")
        headers = {"X-Request-ID": request_id or uuid.uuid4().hex, "Via": hdrs.VIA}
        result = await replay(entry_id, self._settings, self._upstream, headers)
        if result.stored:
            await notify(self._studies_changed, {result.study})
        await self.recount()
        return result

    async def drop(self, entry_id: str) -> None:
        await asyncio.to_thread(self._store.drop, entry_id)
        await self.recount()

    async def recount(self) -> None:
        """Set ``dicomweb_proxy_dead_letter_entries`` to the entries now kept."""
        if self._metrics is not None:
            dead_letter_entries(self._metrics, await asyncio.to_thread(self._store.count))
