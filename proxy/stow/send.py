"""Send STOW-RS batches upstream: bounded concurrency, retries, 413 splitting.

SPEC section 5: connection errors, timeouts, 408, 429, 500, 502, 503 and 504 are retried
with exponential backoff and jitter, honouring ``Retry-After`` (RFC 9110 section
10.2.3), up to ``--stow-retries`` attempts; a 413 halves the batch and tries again.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from proxy.dicomweb.rewrite import Rewriter
from proxy.dicomweb.stow_encoding import parse
from proxy.dicomweb.stow_response import BatchReport, StowResult, resolve
from proxy.errors import UpstreamError, UpstreamTimeout
from proxy.settings import Settings
from proxy.stow.batch import Batch, encode
from proxy.upstream import Upstream, read_bounded

log = logging.getLogger("dicomweb_proxy")

RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})
MAX_RESPONSE_BYTES = 16 * 1024**2
MAX_DELAY = 60.0
ACCEPT = "application/dicom+json"
_BODY_HEADERS = (
    "Content-Type",
    "Content-Length",
    "Content-Encoding",
    "Content-MD5",
    "Digest",
    "Accept",
    "Transfer-Encoding",
)


@dataclass(frozen=True)
class SendPolicy:
    """How batches are sent: attempts per batch, the first retry's delay, and how many
    batches are in flight at once (``--stow-retries``, ``--stow-retry-delay``,
    ``--stow-concurrency``)."""

    attempts: int
    base_delay: float
    concurrency: int

    @classmethod
    def from_settings(cls, settings: Settings) -> SendPolicy:
        return cls(settings.stow_retries, settings.stow_retry_delay, settings.stow_concurrency)


@dataclass(frozen=True)
class Answer:
    """One attempt: the upstream's status (None when none came) and what it said."""

    status: int | None
    result: StowResult | None = None
    retry_after: float | None = None
    warnings: tuple[str, ...] = ()
    detail: str = ""

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status in RETRYABLE


@dataclass(frozen=True)
class Sent:
    """The final outcome of one batch, after retries."""

    batch: Batch
    report: BatchReport
    attempts: int
    answered: bool  # the upstream's body named the batch's instances
    warnings: tuple[str, ...]
    detail: str


class Sender:
    """Sends batches to one upstream URL with the client's forwarded headers."""

    def __init__(
        self,
        upstream: Upstream,
        url: URL,
        headers: Mapping[str, str],
        policy: SendPolicy,
        rewriter: Rewriter | None = None,
        params: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.upstream = upstream
        self.url = url
        self.headers = CIMultiDict(headers)
        # Describe the client's body, not a batch's (aiohttp already decoded any
        # Content-Encoding of the client body).
        for name in _BODY_HEADERS:
            self.headers.popall(name, None)
        self.policy = policy
        self.rewriter = rewriter
        self.params = params

    async def send_all(self, batches: Sequence[Batch]) -> list[Sent]:
        """Every batch, ``--stow-concurrency`` at a time, results in batch order."""
        slots = asyncio.Semaphore(self.policy.concurrency)

        async def one(batch: Batch) -> list[Sent]:
            async with slots:
                return await self.send(batch)

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(batch)) for batch in batches]
        return [sent for task in tasks for sent in task.result()]

    async def send(self, batch: Batch) -> list[Sent]:
        """One batch; a 413 without a STOW body splits it in halves."""
        sent = await self._with_retries(batch)
        too_large = sent.report.status == 413 and not sent.answered
        if too_large and len(batch.instances) > 1:
            first, second = batch.halves()
            return [*await self.send(first), *await self.send(second)]
        return [sent]

    async def _with_retries(self, batch: Batch) -> Sent:
        attempt = 0
        while True:
            attempt += 1
            answer = await self._attempt(batch)
            if attempt >= self.policy.attempts or not answer.retryable:
                break
            await asyncio.sleep(self._delay(attempt, answer.retry_after))
        report = resolve(answer.status, answer.result, batch.sops)
        answered = answer.result is not None and answer.result.usable
        if answer.status == 200 and not answered:
            log.warning(
                "STOW: the upstream stored a batch of %d but its response cannot be read; "
                "reported as stored from the instances sent [%s]",
                len(batch.instances),
                self.headers.get("X-Request-ID", "-"),
            )
        return Sent(batch, report, attempt, answered, answer.warnings, answer.detail)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with full jitter, never shorter than ``Retry-After``."""
        backoff = self.policy.base_delay * 2 ** (attempt - 1)
        delay = random.uniform(backoff / 2, backoff)
        return min(max(delay, retry_after or 0.0), MAX_DELAY)

    async def _attempt(self, batch: Batch) -> Answer:
        body = encode(batch, self.params)
        headers = CIMultiDict(self.headers)
        headers["Content-Type"] = body.content_type
        headers["Content-Length"] = str(body.length)
        headers["Accept"] = ACCEPT
        try:
            # body.stream makes a fresh stream per call: the batch can be sent again
            # after a 401 renewed the upstream credential (proxy.upstream).
            async with self.upstream.request("POST", self.url, headers, body.stream) as response:
                return await self._answer(response)
        except (UpstreamError, UpstreamTimeout) as exc:
            return Answer(None, detail=exc.detail)

    async def _answer(self, response: aiohttp.ClientResponse) -> Answer:
        raw = await read_bounded(response, MAX_RESPONSE_BYTES, "STOW-RS response")
        warnings = tuple(response.headers.getall("Warning", ()))
        if self.rewriter is not None:
            raw = self.rewriter.rewrite_bytes(raw)
            warnings = tuple(self.rewriter.rewrite_header(w) for w in warnings)
        return Answer(
            response.status,
            parse(raw, response.headers.get("Content-Type", "")) if raw else None,
            _retry_after(response.headers.get("Retry-After")),
            warnings,
            f"HTTP {response.status}",
        )


def _retry_after(value: str | None) -> float | None:
    """Seconds or an HTTP-date (RFC 9110 section 10.2.3)."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
