"""The disk store: a diskcache index whose values are body files moved in, not copied.

``diskcache`` gives the SQLite index, size accounting, LRU eviction, tags and
cross-process safety.  What it lacks is a way to adopt a file that is already on disk:
:class:`BodyDisk` adds it, so a fill written to ``tmp/`` becomes an entry by one
``rename`` — a reader never sees a partial body, and a crash leaves only ``tmp/`` files,
which :meth:`Store.open` removes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

import diskcache

from proxy.lru import LRU

# A mode number diskcache does not use: "value is a body file plus JSON meta".
MODE_BODY = 7
# Hits are answered from memory for this long before the index is asked again (which
# also renews the entry's LRU position): a hit then costs no SQLite transaction.
HOT_ENTRIES = 8192
HOT_SECONDS = 30.0
STATE_SECONDS = 1.0
# Headers of the upstream response that are kept with a body and replayed on hits.
_KEPT_HEADERS = ("Content-Type", "Content-Encoding", "Content-Language", "Warning")


@dataclass
class Meta:
    """What is stored beside a body file."""

    status: int
    headers: dict[str, str]
    stored_at: float
    size: int
    etag: str
    rewrite: bool
    count: int | None = None  # study instance count when filled (study-level entries)
    part_urls: bool = False  # a multipart body whose part headers name upstream URLs

    @staticmethod
    def keep_headers(headers: Any) -> dict[str, str]:
        return {name: headers[name] for name in _KEPT_HEADERS if name in headers}


@dataclass(frozen=True)
class Hit:
    meta: Meta
    path: Path
    key: str = ""

    def open(self) -> BinaryIO | None:
        """The body, or None when it was evicted meanwhile.  Unbuffered: it goes out
        with sendfile or in one read, and the buffer would cost a hit ~2 µs."""
        try:
            return open(self.path, "rb", buffering=0)
        except FileNotFoundError:
            return None


@dataclass(frozen=True)
class NewBody:
    """A complete body in ``tmp/`` to be adopted by the index."""

    temp_path: Path
    meta: Meta


@dataclass
class StudyState:
    """Revalidation state of one study (SPEC section 3, finality)."""

    count: int | None
    since: float
    checked_at: float
    final: bool = False


class BodyDisk(diskcache.Disk):  # type: ignore[misc]
    """diskcache Disk that adopts finished body files by rename."""

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        if not isinstance(value, NewBody):
            return super().store(value, read, key=key)
        filename, full_path = self.filename(key, value)
        os.makedirs(os.path.dirname(full_path), exist_ok=True)
        os.replace(value.temp_path, full_path)
        return value.meta.size, MODE_BODY, filename, json.dumps(asdict(value.meta))

    def fetch(self, mode: int, filename: str, value: Any, read: bool) -> Any:
        if mode != MODE_BODY:
            return super().fetch(mode, filename, value, read)
        return Hit(Meta(**json.loads(value)), Path(self._directory) / filename)


class Store:
    """Bounded, persistent, LRU: the cache never exceeds ``size_limit`` bytes."""

    def __init__(self, directory: Path, size_limit: int) -> None:
        self.directory = directory
        self.tmp = directory / "tmp"
        self.size_limit = size_limit
        self._hot: LRU[str, tuple[float, Hit]] = LRU(HOT_ENTRIES)
        self._states: dict[str, tuple[float, StudyState | None]] = {}
        self.index = diskcache.Cache(
            str(directory / "index"),
            disk=BodyDisk,
            size_limit=size_limit,
            eviction_policy="least-recently-used",
            cull_limit=0,  # culled explicitly after each commit, until under the limit
            statistics=False,
        )

    @classmethod
    def open(cls, directory: Path, size_limit: int) -> Store:
        (directory / "tmp").mkdir(parents=True, exist_ok=True)
        return cls(directory, size_limit)

    @staticmethod
    def remove_leftovers(directory: Path) -> None:
        """Delete fills interrupted by a crash (kill -9).  Called once per start, before
        any worker runs, since a worker's live fills look the same."""
        shutil.rmtree(directory / "tmp", ignore_errors=True)

    def close(self) -> None:
        self.index.close()

    def temp_path(self) -> Path:
        return self.tmp / f"{uuid.uuid4().hex}.part"

    def get(self, key: str) -> Hit | None:
        """The entry for ``key``.  From memory when seen within HOT_SECONDS: the body
        may have been evicted since (by another worker), so callers open it and
        :meth:`forget` the key when it is gone."""
        now = time.monotonic()
        remembered = self._hot.get(key)
        if remembered is not None and now - remembered[0] < HOT_SECONDS:
            return remembered[1]
        found = self.index.get(key, default=None, retry=True)
        if not isinstance(found, Hit):
            self._hot.pop(key)
            return None
        found = replace(found, key=key)
        self._hot.put(key, (now, found))
        return found

    def forget(self, key: str) -> None:
        self._hot.pop(key)

    def commit(self, key: str, body: NewBody, tag: str | None) -> bool:
        """Adopt a finished body; False (and the temp file removed) when it cannot fit."""
        if body.meta.size > self.size_limit:
            body.temp_path.unlink(missing_ok=True)
            return False
        self._hot.pop(key)
        self.index.set(key, body, tag=tag, retry=True)
        if self.index.volume() > self.size_limit:
            self.index.cull(retry=True)
            self._hot.clear()  # whatever was culled must not be served from memory
        return True

    def purge(self, tags: list[str] | None = None) -> int:
        """Every entry, or those of ``tags``; the number removed."""
        self.forget_all()
        return self.delete(tags)

    def forget_all(self) -> None:
        """Drop what is remembered in memory (event-loop side only: not thread-safe)."""
        self._hot.clear()
        self._states.clear()

    def delete(self, tags: list[str] | None = None) -> int:
        """Remove entries and their files from the index; safe in another thread (the
        index is diskcache's, one SQLite connection per thread) and slow on a large
        cache: the cache runs it off the event loop."""
        if tags is None:
            return int(self.index.clear(retry=True))
        return sum(int(self.index.evict(tag, retry=True)) for tag in tags)

    def stats(self) -> dict[str, int]:
        return {"entries": len(self.index), "bytes": int(self.index.volume())}

    # -- study state -------------------------------------------------------------

    def study_state(self, key: str) -> StudyState | None:
        now = time.monotonic()
        remembered = self._states.get(key)
        if remembered is not None and now - remembered[0] < STATE_SECONDS:
            return remembered[1]
        raw = self.index.get(key, default=None, retry=True)
        state = StudyState(**json.loads(raw)) if isinstance(raw, str) else None
        if len(self._states) >= HOT_ENTRIES:
            self._states.clear()
        self._states[key] = (now, state)
        return state

    def set_study_state(self, key: str, state: StudyState, tag: str) -> None:
        self.index.set(key, json.dumps(asdict(state)), tag=tag, retry=True)
        self._states[key] = (time.monotonic(), state)


def etag_for(path: Path) -> str:
    """The same validator aiohttp's FileResponse derives, so both paths agree."""
    st = path.stat()
    return f'"{st.st_mtime_ns:x}-{st.st_size:x}"'


def free_bytes(directory: Path) -> int:
    with contextlib.suppress(OSError):
        stats = os.statvfs(directory)
        return stats.f_bavail * stats.f_frsize
    return 0
