"""OAuth2 client-credentials tokens for the upstream (RFC 6749 section 4.4).

One token serves every request (single flight, refreshed shortly before
``expires_in``, once more on a 401: :mod:`proxy.auth.tokens`).  The token request is
a form POST; :mod:`proxy.auth.azure` reuses it for Entra ID and the Azure metadata
services by changing :meth:`OAuth2Credentials.token_request`.
"""

from __future__ import annotations

import abc
import json
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_plus

import aiohttp

from proxy.auth.credentials import basic_authorization
from proxy.auth.tokens import DEFAULT_LIFETIME, Token, TokenCredentials, usable_for
from proxy.auth.watched import Secret
from proxy.errors import UpstreamAuthFailed
from proxy.streams import read_at_most

# A token response is a small JSON object; never read more than this.
RESPONSE_LIMIT = 64 * 1024
# RFC 6750 section 2.1 b64token; anything else could not go into a header safely.
_B64TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")
_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
OAUTH2_ENDPOINT = "the OAuth2 token endpoint"


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
class TokenRequest:
    """One token request: a form POST (RFC 6749 section 4.4.2), or a GET when ``form``
    is None (a metadata service).  ``endpoint`` names the issuer in errors."""

    url: str
    form: dict[str, str] | None = field(default=None, repr=False)
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    endpoint: str = OAUTH2_ENDPOINT


class EndpointCredentials(TokenCredentials):
    """A token from an HTTP token endpoint, asked with aiohttp (no thread, no SDK);
    subclasses say what to ask (:meth:`token_request`)."""

    def __init__(
        self,
        *,
        timeout: float = 30.0,
        ssl_context: ssl.SSLContext | bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(clock=clock)
        self._timeout = timeout
        self._ssl = ssl_context
        self._session: aiohttp.ClientSession | None = None

    @abc.abstractmethod
    def token_request(self) -> TokenRequest:
        """The request that obtains a new token (it may read a secret file now)."""

    async def obtain(self, started: float) -> Token:
        request = self.token_request()
        status, document = await self._send(request)
        return parse_token_response(status, document, started, request.endpoint)

    async def close(self) -> None:
        await super().close()
        if self._session is not None:
            await self._session.close()

    async def _send(self, request: TokenRequest) -> tuple[int, Any]:
        method = "GET" if request.form is None else "POST"
        try:
            async with self._client().request(
                method,
                request.url,
                data=request.form,
                headers=request.headers,
                allow_redirects=False,
            ) as response:
                return response.status, await _read_json(response)
        except TimeoutError as exc:
            raise UpstreamAuthFailed(f"{request.endpoint} did not answer in time") from exc
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamAuthFailed(f"{request.endpoint} is unreachable: {exc.strerror}") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamAuthFailed(
                f"the token request to {request.endpoint} failed: {type(exc).__name__}"
            ) from exc

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


class OAuth2Credentials(EndpointCredentials):
    """RFC 6749 section 4.4 client credentials (``--upstream-auth oauth2``)."""

    kind = "OAuth2 token"

    def __init__(
        self,
        config: ClientConfig,
        *,
        timeout: float = 30.0,
        ssl_context: ssl.SSLContext | bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(timeout=timeout, ssl_context=ssl_context, clock=clock)
        self._config = config

    def __repr__(self) -> str:
        return f"OAuth2Credentials({self._config!r})"

    def describe(self) -> str:
        return f"oauth2 client {self._config.client_id!r} at {self._config.token_url}"

    def token_request(self) -> TokenRequest:
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
        return TokenRequest(config.token_url, form, headers)


async def _read_json(response: aiohttp.ClientResponse) -> Any:
    """The response as JSON when it is a small JSON document, else None."""
    body = await read_at_most(response.content.iter_any(), RESPONSE_LIMIT)
    if body is None:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def parse_token_response(
    status: int, document: Any, started: float, endpoint: str = OAUTH2_ENDPOINT
) -> Token:
    """RFC 6749 section 5.1 (success) and 5.2 (error); errors name what went wrong
    without repeating anything the endpoint sent except a well-formed error code."""
    if status != 200:
        code = document.get("error") if isinstance(document, dict) else None
        suffix = f" ({code})" if isinstance(code, str) and _ERROR_CODE.match(code) else ""
        if status in (400, 401, 403):
            raise UpstreamAuthFailed(f"{endpoint} rejected the client: HTTP {status}{suffix}")
        raise UpstreamAuthFailed(f"{endpoint} answered HTTP {status}{suffix}")
    if not isinstance(document, dict):
        raise UpstreamAuthFailed(f"{endpoint} did not answer with JSON")
    value = document.get("access_token")
    if not isinstance(value, str) or not _B64TOKEN.match(value):
        raise UpstreamAuthFailed(f"{endpoint} sent no usable access_token")
    token_type = document.get("token_type", "Bearer")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise UpstreamAuthFailed(f"{endpoint} issued a token that is not Bearer")
    lifetime = _lifetime(document.get("expires_in"))
    return Token(value=value, refresh_at=started + usable_for(lifetime))


def _lifetime(expires_in: object) -> float:
    """RFC 6749 section 5.1 says a number; anything else gets the default lifetime."""
    if isinstance(expires_in, int | float) or (
        isinstance(expires_in, str) and re.fullmatch(r"\d+(\.\d+)?", expires_in)
    ):
        return float(expires_in)
    return DEFAULT_LIFETIME
