"""Proxy -> upstream credentials (SPEC section 4, ``--upstream-auth``).

:class:`Credentials` is what :class:`proxy.upstream.Upstream` asks to put a credential
on every upstream request (:meth:`Credentials.apply`), and tells when the upstream
refused it.  Most providers only supply an ``Authorization`` value
(:class:`HeaderCredentials`); AWS SigV4 signs the whole request (method, URL, headers,
payload hash), which is why the hook sees the request and not just a header.
``passthrough`` has no provider: the client's own header is forwarded.
"""

from __future__ import annotations

import abc
from base64 import b64encode
from dataclasses import dataclass
from typing import TYPE_CHECKING

from multidict import CIMultiDict
from yarl import URL

from proxy.auth.watched import Secret

if TYPE_CHECKING:
    from proxy.upstream import BodyFactory


@dataclass
class Outgoing:
    """One upstream request about to be sent; a provider may add headers and (SigV4,
    to send the query exactly as it was signed) replace the URL.  ``headers`` is the
    request's own copy, never the caller's mapping."""

    method: str
    url: URL
    headers: CIMultiDict[str]
    body: BodyFactory | None  # upstream.Once: a body that can be read only once


class Credentials(abc.ABC):
    """Puts the upstream credential on requests and renews it when it is refused."""

    @abc.abstractmethod
    async def apply(self, request: Outgoing) -> str:
        """Add the credential to ``request``; returns an opaque value naming what was
        sent, given back to :meth:`renew` if the upstream refuses it (never logged)."""

    def refused(self, status: int) -> bool:
        """Whether ``status`` means the credential was refused (RFC 9110 15.5.2: 401)."""
        return status == 401

    async def renew(self, rejected: str) -> bool:
        """Called after the upstream refused ``rejected``; True when a different
        credential is now available, so that the request is worth sending once more."""
        return False

    @abc.abstractmethod
    def describe(self) -> str:
        """One line for ``dicomweb-proxy check``, without any secret."""

    @abc.abstractmethod
    async def ready(self) -> str:
        """Obtain the credential now (``dicomweb-proxy check``); the line naming it and
        the source it came from.  Raises UpstreamAuthFailed when none can be had."""

    async def close(self) -> None:
        """Release what the provider holds (sessions); most hold nothing."""
        return None


class HeaderCredentials(Credentials):
    """A provider whose credential is one ``Authorization`` value (RFC 9110 11.6.2)."""

    @abc.abstractmethod
    async def authorization(self) -> str:
        """The header value to send now (may fetch or re-read a credential)."""

    async def apply(self, request: Outgoing) -> str:
        value = await self.authorization()
        request.headers["Authorization"] = value
        return value

    async def ready(self) -> str:
        await self.authorization()
        return self.describe()


class BasicCredentials(HeaderCredentials):
    """RFC 7617 Basic with ``--upstream-username`` and the password (inline or file)."""

    def __init__(self, username: str, password: Secret) -> None:
        self._username = username
        self._password = password

    def __repr__(self) -> str:
        return f"BasicCredentials(username={self._username!r}, password={self._password!r})"

    async def authorization(self) -> str:
        return basic_authorization(self._username, self._password.value())

    async def renew(self, rejected: str) -> bool:
        if not self._password.rotates:
            return False
        return basic_authorization(self._username, self._password.value(force=True)) != rejected

    def describe(self) -> str:
        return f"basic as user {self._username!r}"


class BearerCredentials(HeaderCredentials):
    """RFC 6750 bearer token: static, or a file re-read when it changes (Kubernetes
    projected service-account tokens, Vault agent sinks)."""

    def __init__(self, token: Secret) -> None:
        self._token = token

    def __repr__(self) -> str:
        return f"BearerCredentials(token={self._token!r})"

    async def authorization(self) -> str:
        return f"Bearer {self._token.value()}"

    async def renew(self, rejected: str) -> bool:
        """A 401 may mean the file was rotated within the last second: look again now."""
        if not self._token.rotates:
            return False
        return f"Bearer {self._token.value(force=True)}" != rejected

    def describe(self) -> str:
        return "bearer token" + (" from a file" if self._token.rotates else "")


def basic_authorization(username: str, password: str) -> str:
    """RFC 7617 section 2: ``Basic base64(user-id ":" password)`` in UTF-8."""
    return "Basic " + b64encode(f"{username}:{password}".encode()).decode("ascii")
