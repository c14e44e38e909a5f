"""The cache partition of a request (SPEC section 3, "Partitions").

With ``--upstream-auth passthrough`` the upstream decides per client credential what
may be read, so each credential gets its own partition: an HMAC-SHA256 of the
client's ``Authorization`` and ``Cookie`` values (both are forwarded upstream in that
mode), never the credential itself.  A request without either gets ``anonymous``.
With every other mode the proxy's own credential decides, and all clients that passed
inbound auth share :data:`SHARED`.

The HMAC key lives in ``<data-dir>/partition.key`` (32 random bytes, mode 0600),
created once and shared by every worker, so partitions survive restarts; when the
data directory cannot hold it a per-process key is used (the cache then starts cold
for passthrough clients after each restart).

Use :func:`partition` with a request of an app built by ``create_app``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from aiohttp import web

from proxy.state import PARTITIONER

log = logging.getLogger("dicomweb_proxy.auth")

SHARED = "shared"
ANONYMOUS = "anonymous"
KEY_FILE = "partition.key"
KEY_BYTES = 32
# The credential headers that select what a passthrough client may read.
_CREDENTIAL_HEADERS = ("Authorization", "Cookie")


class Partitioner:
    """Maps a request to its partition name: ``shared``, ``anonymous`` or ``c-<hex>``."""

    def __init__(self, key: bytes | None) -> None:
        """``key`` None: everyone shares one partition (every mode but passthrough)."""
        self._key = key

    def __repr__(self) -> str:
        return f"Partitioner(per_credential={self._key is not None})"

    def of(self, authorization: str | None, cookie: str | None) -> str:
        if self._key is None:
            return SHARED
        if not authorization and not cookie:
            return ANONYMOUS
        # Length-prefixed so that no pair of values can collide with another pair.
        message = b"".join(
            len(part).to_bytes(4, "big") + part
            for part in ((authorization or "").encode(), (cookie or "").encode())
        )
        return "c-" + hmac.new(self._key, message, hashlib.sha256).hexdigest()[:32]


def partition(request: web.Request) -> str:
    """The cache partition of ``request`` (``shared`` when the app has no partitioner)."""
    partitioner = request.app.get(PARTITIONER)
    if partitioner is None:
        return SHARED
    headers = request.headers
    return partitioner.of(*(headers.get(name) for name in _CREDENTIAL_HEADERS))


def load_key(data_dir: Path) -> bytes:
    """The persisted key, created atomically on first use; a per-process key when the
    directory is not writable."""
    path = data_dir / KEY_FILE
    try:
        return _read_key(path) if path.exists() else _create_key(path)
    except OSError as exc:
        log.warning("cannot keep %s (%s); using a per-process partition key", path, exc.strerror)
        return secrets.token_bytes(KEY_BYTES)


def _create_key(path: Path) -> bytes:
    """Written to a private temporary file and linked into place: a concurrent worker
    either wins the link or reads the winner's complete key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(secrets.token_bytes(KEY_BYTES))
        with contextlib.suppress(FileExistsError):  # another worker was first
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)  # the key lets anyone holding it test guesses of credentials
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise OSError(0, f"{KEY_FILE} is not {KEY_BYTES} bytes")
    return key
