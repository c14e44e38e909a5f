"""Cross-process single flight for ``--workers``: one fill per key across processes.

Keys hash onto a fixed set of lock files (``flock``), so the lock directory never grows;
two keys sharing a stripe only make one wait for the other's fill.  A lock held by a
process that dies is released by the kernel.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path

STRIPES = 1024
# How often a request waiting for another worker's fill looks again.
POLL_SECONDS = 0.01


class KeyLocks:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
        return self.directory / f"{int.from_bytes(digest) % STRIPES:04d}.lock"

    def try_acquire(self, key: str) -> int | None:
        """A held lock (its fd), or None when another process holds it."""
        fd = os.open(self._path(key), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    @staticmethod
    def release(fd: int | None) -> None:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
