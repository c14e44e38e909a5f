"""A bearer token shared by every upstream request, refreshed in a single flight.

The machinery behind ``oauth2``, ``azure`` and ``google`` (SPEC section 4): one token
serves every request; it is obtained by one call however many requests need it at once,
kept until shortly before it expires, and obtained again, once, when the upstream
refuses it (it may have been revoked).  Subclasses say only how a token is obtained
(:meth:`TokenCredentials.obtain`).
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from proxy.auth.credentials import HeaderCredentials

log = logging.getLogger("dicomweb_proxy.auth")

# Used when the issuer does not say how long the token lives.
DEFAULT_LIFETIME = 300.0
# Refresh this share of the lifetime before expiry, at most MAX_MARGIN seconds.
MARGIN_SHARE = 0.1
MAX_MARGIN = 60.0
# A token obtained because the upstream refused the previous one is not thrown away
# again within this many seconds: an upstream that refuses every token must not make
# every request fetch one.
RENEW_BACKOFF = 5.0


@dataclass(frozen=True)
class Token:
    value: str = field(repr=False)
    refresh_at: float


def usable_for(lifetime: float) -> float:
    """Seconds a token that lives ``lifetime`` seconds is used before it is refreshed."""
    lifetime = max(lifetime, 0.0)
    return lifetime - min(lifetime * MARGIN_SHARE, MAX_MARGIN)


class TokenCredentials(HeaderCredentials):
    """``Authorization: Bearer <token>`` from a token cached and refreshed in one flight."""

    kind = "token"  # named in log lines: "obtained a token", "refused the token"

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._token: Token | None = None
        self._flight: asyncio.Task[Token] | None = None
        self._renewed_at = -RENEW_BACKOFF
        self.fetches = 0

    @abc.abstractmethod
    async def obtain(self, started: float) -> Token:
        """A new token, its ``refresh_at`` on this object's clock (``started`` is the
        clock when the request began).  Raises UpstreamAuthFailed naming what failed."""

    async def authorization(self) -> str:
        token = self._token
        if token is None or self._clock() >= token.refresh_at:
            token = await self._refreshed()
        return f"Bearer {token.value}"

    async def renew(self, rejected: str) -> bool:
        """One refresh per refused token, shared by every request it was refused to."""
        if self._flight is not None and not self._flight.done():
            return f"Bearer {(await self._refreshed()).value}" != rejected
        current = self._token
        if current is not None and f"Bearer {current.value}" != rejected:
            return True  # already replaced since that request went out
        if self._clock() - self._renewed_at < RENEW_BACKOFF:
            return False
        self._renewed_at = self._clock()
        log.warning("the upstream refused the %s (HTTP 401); obtaining a new one", self.kind)
        return f"Bearer {(await self._refreshed()).value}" != rejected

    async def close(self) -> None:
        if self._flight is not None and not self._flight.done():
            self._flight.cancel()

    async def _refreshed(self) -> Token:
        """Join the fetch in flight, or start one.  The fetch is shielded: a caller
        that goes away (client disconnect) does not cancel it for the others."""
        if self._flight is None or self._flight.done():
            self._flight = asyncio.get_running_loop().create_task(self._fetch())
            self._flight.add_done_callback(_retrieve_exception)
        return await asyncio.shield(self._flight)

    async def _fetch(self) -> Token:
        started = self._clock()
        self.fetches += 1
        token = await self.obtain(started)
        self._token = token
        log.info(
            "%s: obtained a %s (refresh in %.0f s)",
            self.describe(),
            self.kind,
            token.refresh_at - started,
        )
        return token


def _retrieve_exception(task: asyncio.Task[Token]) -> None:
    """Mark a failed flight's exception as seen: its waiters each got it already."""
    if not task.cancelled():
        task.exception()
