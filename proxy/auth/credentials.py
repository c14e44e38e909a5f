"""Proxy -> upstream credentials (SPEC section 4, ``--upstream-auth``).

:class:`Credentials` is what :class:`proxy.upstream.Upstream` asks for the
``Authorization`` header of every upstream request, and tells when the upstream
answered 401.  ``passthrough`` has no provider: the client's own header is forwarded.
"""

from __future__ import annotations

import abc
from base64 import b64encode

from proxy.auth.watched import Secret


class Credentials(abc.ABC):
    """Supplies the ``Authorization`` value for upstream requests."""

    @abc.abstractmethod
    async def authorization(self) -> str:
        """The header value to send now (may fetch or re-read a credential)."""

    async def renew(self, rejected: str) -> bool:
        """Called after the upstream answered 401 to ``rejected``; True when a different
        credential is now available, so that the request is worth sending once more."""
        return False

    @abc.abstractmethod
    def describe(self) -> str:
        """One line for ``dicomweb-proxy check``, without any secret."""

    async def close(self) -> None:
        """Release what the provider holds (sessions); most hold nothing."""
        return None


class BasicCredentials(Credentials):
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


class BearerCredentials(Credentials):
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
