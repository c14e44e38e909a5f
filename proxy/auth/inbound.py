"""Client -> proxy authentication (SPEC section 4, ``--inbound-auth``).

* ``basic``: users of an htpasswd file (RFC 7617); bcrypt, SHA-256-crypt and
  SHA-512-crypt hashes, verified by ``libpass`` (imported as ``passlib``).  Weaker
  schemes (MD5 ``$apr1$``, DES crypt, plain text) are refused.
* ``bearer``: static tokens from a file, one per line (RFC 6750).

Both files are re-read when they change (looked at no more than once a second).
Failures answer 401 with ``WWW-Authenticate`` (RFC 9110 section 11.6.1).  ``/healthz``,
``/readyz`` and ``/metrics`` are open; ``/admin/*`` is guarded by the admin token
instead (:mod:`proxy.admin`).
"""

from __future__ import annotations

import abc
import asyncio
import binascii
import hashlib
import hmac
import logging
import secrets
from base64 import b64decode

from aiohttp import web
from aiohttp.typedefs import Handler
from passlib.apache import HtpasswdFile
from passlib.context import CryptContext

from proxy.auth.watched import WatchedFile
from proxy.errors import Unauthorized
from proxy.lru import LRU
from proxy.state import INBOUND

log = logging.getLogger("dicomweb_proxy.auth")

REALM = "dicomweb-proxy"
# Routes answered without inbound auth: probes and scrapes, and /admin (own token).
_OPEN_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
_ADMIN = "/admin"

_SCHEMES = CryptContext(schemes=["bcrypt", "sha256_crypt", "sha512_crypt"])


class Gate(abc.ABC):
    """One inbound authentication method."""

    scheme: str

    @abc.abstractmethod
    async def admits(self, authorization: str) -> bool:
        """Whether the ``Authorization`` header value is acceptable."""

    @property
    @abc.abstractmethod
    def size(self) -> int:
        """How many users or tokens are known."""

    def challenge(self, *, presented: bool) -> str:
        return f'{self.scheme} realm="{REALM}"'


class HtpasswdGate(Gate):
    """``Authorization: Basic`` checked against an htpasswd file.

    bcrypt is slow by design (~0.25 s at cost 12), so verdicts are remembered in a
    small LRU keyed by an HMAC of the credential under a per-process random key:
    a client repeating its credentials pays the hash once, and no plaintext (nor an
    offline-attackable plain hash) is kept.  The file's version is part of the key,
    so a changed file invalidates every verdict.
    """

    scheme = "Basic"

    def __init__(self, file: WatchedFile, *, cache_size: int = 1024) -> None:
        self._file = file
        self._key = secrets.token_bytes(32)
        self._verdicts: LRU[bytes, bool] = LRU(cache_size)
        self._version = -1
        self._hashes: dict[str, str] = {}
        self._reload()

    def __repr__(self) -> str:
        return f"HtpasswdGate({self._file!r}, users={self.size})"

    @property
    def size(self) -> int:
        return len(self._hashes)

    def challenge(self, *, presented: bool) -> str:
        return f'Basic realm="{REALM}", charset="UTF-8"'

    async def admits(self, authorization: str) -> bool:
        pair = basic_credentials(authorization)
        if pair is None:
            return False
        self._reload()
        user, password = pair
        key = self._verdict_key(user, password)
        cached = self._verdicts.get(key)
        if cached is not None:
            return cached
        verdict = await asyncio.to_thread(self._verify, user, password)
        self._verdicts.put(key, verdict)
        return verdict

    def _verdict_key(self, user: str, password: str) -> bytes:
        message = b"\0".join((str(self._version).encode(), user.encode(), password.encode()))
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def _verify(self, user: str, password: str) -> bool:
        stored = self._hashes.get(user)
        if stored is None:
            return False
        try:
            return bool(_SCHEMES.verify(password, stored))
        except ValueError:  # e.g. bcrypt refuses passwords over 72 bytes
            return False

    def _reload(self) -> None:
        text = self._file.text()
        if self._file.version == self._version:
            return
        self._hashes = parse_htpasswd(text, self._file.path)
        self._version = self._file.version
        self._verdicts.clear()


def parse_htpasswd(text: str, path: str) -> dict[str, str]:
    """``user:hash`` lines; users whose hash uses a refused scheme are left out."""
    parsed = HtpasswdFile.from_string(text)
    hashes: dict[str, str] = {}
    for user in parsed.users():
        stored = parsed.get_hash(user)
        stored_text = stored.decode() if isinstance(stored, bytes) else str(stored)
        if _SCHEMES.identify(stored_text, required=False) is None:
            log.warning(
                "%s: user %r has an unsupported hash scheme (use bcrypt: htpasswd -B); ignored",
                path,
                user,
            )
            continue
        hashes[user] = stored_text
    return hashes


def basic_credentials(authorization: str) -> tuple[str, str] | None:
    """RFC 7617: ``Basic base64(user ":" password)``, UTF-8; None when malformed."""
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = decoded.partition(":")
    return (user, password) if colon and user else None


class TokenGate(Gate):
    """``Authorization: Bearer`` checked against the tokens of a file.

    Only SHA-256 digests of the tokens are kept; every candidate is compared with
    :func:`hmac.compare_digest`, and all of them are compared, so neither content nor
    position leaks through timing.
    """

    scheme = "Bearer"

    def __init__(self, file: WatchedFile) -> None:
        self._file = file
        self._version = -1
        self._digests: tuple[bytes, ...] = ()
        self._reload()

    def __repr__(self) -> str:
        return f"TokenGate({self._file!r}, tokens={self.size})"

    @property
    def size(self) -> int:
        return len(self._digests)

    def challenge(self, *, presented: bool) -> str:
        # RFC 6750 section 3: no error code when the request carried no token.
        extra = ', error="invalid_token"' if presented else ""
        return f'Bearer realm="{REALM}"{extra}'

    async def admits(self, authorization: str) -> bool:
        scheme, _, given = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return False
        self._reload()
        digest = _digest(given.strip())
        matched = False
        for candidate in self._digests:
            matched |= hmac.compare_digest(digest, candidate)
        return matched

    def _reload(self) -> None:
        text = self._file.text()
        if self._file.version == self._version:
            return
        self._digests = tuple(_digest(token) for token in parse_tokens(text))
        self._version = self._file.version


def parse_tokens(text: str) -> list[str]:
    """One token per line; blank lines and ``#`` comments are ignored."""
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@web.middleware
async def inbound_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse requests without acceptable credentials when ``--inbound-auth`` is set."""
    gate = request.app.get(INBOUND)
    if gate is None or is_open(request):
        return await handler(request)
    authorization = request.headers.get("Authorization", "")
    if not await gate.admits(authorization):
        raise Unauthorized(
            "valid credentials are required" if authorization else "credentials are required",
            headers={"WWW-Authenticate": gate.challenge(presented=bool(authorization))},
        )
    return await handler(request)


def is_open(request: web.Request) -> bool:
    """Decided from the route the router matched, not from the raw path, so that no
    spelling of a path (``/admin/../dicom-web``) can borrow another route's exemption."""
    resource = request.match_info.route.resource
    if resource is None:
        return False
    canonical = resource.canonical
    return canonical in _OPEN_ROUTES or canonical == _ADMIN or canonical.startswith(_ADMIN + "/")
