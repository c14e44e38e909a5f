"""OAuth2 client-credentials tokens for the upstream (RFC 6749 section 4.4).

One token serves every request.  It is fetched by one request however many proxy
requests need it at once (single flight), kept until shortly before ``expires_in``,
and fetched again, once, when the upstream answers 401 to it (it may have been revoked).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_plus

import aiohttp

from proxy.auth.credentials import Credentials, basic_authorization
from proxy.auth.watched import Secret
from proxy.errors import UpstreamAuthFailed

log = logging.getLogger("dicomweb_proxy.auth")

# A token response is a small JSON object; never read more than this.
RESPONSE_LIMIT = 64 * 1024
# Used when the token endpoint does not say how long the token lives.
DEFAULT_LIFETIME = 300.0
# Refresh this share of the lifetime before expiry, at most MAX_MARGIN seconds.
MARGIN_SHARE = 0.1
MAX_MARGIN = 60.0
# A token obtained because the upstream refused the previous one is not thrown away
# again within this many seconds: an upstream that refuses every token must not make
# every request fetch one.
RENEW_BACKOFF = 5.0
# RFC 6750 section 2.1 b64token; anything else could not go into a header safely.
_B64TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")
_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


@dataclass(frozen=True)
class ClientConfig:
    """Where and as whom to ask for tokens; ``client_auth`` is ``basic`` (RFC 6749
    section 2.3.1, the method every server must support) or ``body`` (form fields)."""

    token_url: str
    client_id: str
    secret: Secret
    scope: str | None = None
    client_auth: str = "basic"


@dataclass(frozen=True)
class Token:
    value: str = field(repr=False)
    refresh_at: float


class OAuth2Credentials(Credentials):
    def __init__(
        self,
        config: ClientConfig,
        *,
        timeout: float = 30.0,
        ssl_context: ssl.SSLContext | bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._timeout = timeout
        self._ssl = ssl_context
        self._clock = clock
        self._token: Token | None = None
        self._flight: asyncio.Task[Token] | None = None
        self._renewed_at = -RENEW_BACKOFF
        self._session: aiohttp.ClientSession | None = None
        self.fetches = 0

    def __repr__(self) -> str:
        return f"OAuth2Credentials({self._config!r})"

    def describe(self) -> str:
        return f"oauth2 client {self._config.client_id!r} at {self._config.token_url}"

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
        log.warning("the upstream refused the OAuth2 token (401); fetching a new one")
        return f"Bearer {(await self._refreshed()).value}" != rejected

    async def close(self) -> None:
        if self._flight is not None and not self._flight.done():
            self._flight.cancel()
        if self._session is not None:
            await self._session.close()

    # -- single flight ---------------------------------------------------------------

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
        status, document = await self._post()
        token = parse_token_response(status, document, started)
        self._token = token
        log.info(
            "obtained an OAuth2 token from %s (refresh in %.0f s)",
            self._config.token_url,
            token.refresh_at - started,
        )
        return token

    # -- the token request -----------------------------------------------------------

    async def _post(self) -> tuple[int, Any]:
        form, headers = self._request_parts()
        try:
            async with self._client().post(
                self._config.token_url, data=form, headers=headers, allow_redirects=False
            ) as response:
                return response.status, await _read_json(response)
        except TimeoutError as exc:
            raise UpstreamAuthFailed("the OAuth2 token endpoint did not answer in time") from exc
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamAuthFailed(
                f"the OAuth2 token endpoint is unreachable: {exc.strerror}"
            ) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamAuthFailed(
                f"the OAuth2 token request failed: {type(exc).__name__}"
            ) from exc

    def _request_parts(self) -> tuple[dict[str, str], dict[str, str]]:
        """RFC 6749 section 4.4.2 form; the client authenticates per section 2.3.1."""
        config = self._config
        form = {"grant_type": "client_credentials"}
        if config.scope:
            form["scope"] = config.scope
        headers = {"Accept": "application/json"}
        secret = config.secret.value()
        if config.client_auth == "basic":
            # Section 2.3.1: id and secret are form-urlencoded before Basic encoding.
            headers["Authorization"] = basic_authorization(
                quote_plus(config.client_id), quote_plus(secret)
            )
        else:
            form["client_id"] = config.client_id
            form["client_secret"] = secret
        return form, headers

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self._timeout, sock_read=self._timeout
                ),
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=4),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session


async def _read_json(response: aiohttp.ClientResponse) -> Any:
    """The response as JSON when it is a small JSON document, else None."""
    body = b""
    while len(body) <= RESPONSE_LIMIT:
        chunk = await response.content.read(RESPONSE_LIMIT + 1 - len(body))
        if not chunk:
            break
        body += chunk
    if len(body) > RESPONSE_LIMIT:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def parse_token_response(status: int, document: Any, started: float) -> Token:
    """RFC 6749 section 5.1 (success) and 5.2 (error); errors name what went wrong
    without repeating anything the endpoint sent except a well-formed error code."""
    if status != 200:
        code = document.get("error") if isinstance(document, dict) else None
        suffix = f" ({code})" if isinstance(code, str) and _ERROR_CODE.match(code) else ""
        if status in (400, 401, 403):
            raise UpstreamAuthFailed(
                f"the OAuth2 token endpoint rejected the client: HTTP {status}{suffix}"
            )
        raise UpstreamAuthFailed(f"the OAuth2 token endpoint answered HTTP {status}{suffix}")
    if not isinstance(document, dict):
        raise UpstreamAuthFailed("the OAuth2 token endpoint did not answer with JSON")
    value = document.get("access_token")
    if not isinstance(value, str) or not _B64TOKEN.match(value):
        raise UpstreamAuthFailed("the OAuth2 token endpoint sent no usable access_token")
    token_type = document.get("token_type", "Bearer")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise UpstreamAuthFailed("the OAuth2 token endpoint issued a token that is not Bearer")
    return Token(value=value, refresh_at=started + _usable_for(document.get("expires_in")))


def _usable_for(expires_in: object) -> float:
    """RFC 6749 section 5.1 says a number; anything else gets the default lifetime."""
    lifetime = DEFAULT_LIFETIME
    if isinstance(expires_in, int | float) or (
        isinstance(expires_in, str) and re.fullmatch(r"\d+(\.\d+)?", expires_in)
    ):
        lifetime = float(expires_in)
    lifetime = max(lifetime, 0.0)
    return lifetime - min(lifetime * MARGIN_SHARE, MAX_MARGIN)


def _retrieve_exception(task: asyncio.Task[Token]) -> None:
    """Mark a failed flight's exception as seen: its waiters each got it already."""
    if not task.cancelled():
        task.exception()
