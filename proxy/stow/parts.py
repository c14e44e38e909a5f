"""What a spooled STOW-RS request holds: its representation, its parts on disk and the
instances identified in them.

A request's parts lie one after the other in one spool file
(:class:`proxy.stow.spool.SpoolFile`); :class:`SpooledPart` names one part's byte range
and reads it back.  An :class:`Instance`
is what must travel in one batch (PS3.18 section 10.5.1.1.2).
"""

from __future__ import annotations

import enum
import errno
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

from proxy.dicomweb.stow_response import CANNOT_UNDERSTAND, Failed, Sop

READ_AHEAD = 64 * 1024


class Kind(enum.Enum):
    """The three STOW-RS request representations of PS3.18 section 10.5.1.1."""

    DICOM = "application/dicom"
    JSON = "application/dicom+json"
    XML = "application/dicom+xml"


@dataclass(frozen=True)
class SpooledPart:
    """One part's bytes: ``size`` bytes from ``offset`` in ``path`` (a request's parts
    share its one spool file; a dead-letter part has a file of its own)."""

    path: Path
    size: int
    content_type: str
    content_location: str = ""
    offset: int = 0

    def read(self, start: int = 0, size: int | None = None) -> bytes:
        """Bytes from ``start`` within the part (blocking: run in a thread)."""
        count = self.size - start if size is None else min(size, self.size - start)
        with self.path.open("rb") as handle:
            data = os.pread(handle.fileno(), count, self.offset + start)
        if len(data) != count:
            raise OSError(errno.EIO, "a spool file is shorter than the parts it holds")
        return data

    def open(self) -> BinaryIO:
        """The part as a file of its own, for pydicom (blocking).  Unbuffered: a
        buffered reader would give pydicom the name of the whole spool file."""
        return cast(BinaryIO, _Range(self))


@dataclass(frozen=True)
class Instance:
    """What must travel in one batch: a Part 10 file, or a metadata item and the bulk
    data parts it references (PS3.18 section 10.5.1.1.2)."""

    study: str
    series: str
    sop: Sop
    parts: tuple[SpooledPart, ...]
    metadata: bytes = b""  # JSON bodies: this instance's object of the metadata array

    @property
    def size(self) -> int:
        return len(self.metadata) + sum(part.size for part in self.parts)


@dataclass
class Spooled:
    kind: Kind
    instances: list[Instance] = field(default_factory=list)
    rejected: list[Failed] = field(default_factory=list)
    params: tuple[tuple[str, str], ...] = ()

    def add(self, instance: Instance | None) -> None:
        """An identified instance, or a part that is none (0xC000, PS3.18 Table I.2-1)."""
        if instance is None:
            self.rejected.append(Failed("", "", CANNOT_UNDERSTAND))
        else:
            self.instances.append(instance)


class _Range(io.RawIOBase):
    """A part's byte range of the spool file as a file of its own, so a parser can
    never read into the next part.  It reads ahead by :data:`READ_AHEAD`: pydicom asks
    for a few bytes at a time."""

    def __init__(self, part: SpooledPart) -> None:
        self._part = part
        self._file = part.path.open("rb")
        self._position = 0
        self._block, self._block_start = b"", 0

    def close(self) -> None:
        self._file.close()
        super().close()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._part.size}
        self._position = max(0, base[whence] + offset)
        return self._position

    def readinto(self, buffer: Any) -> int:
        count = max(0, min(len(buffer), self._part.size - self._position))
        start = self._position - self._block_start
        if not 0 <= start <= start + count <= len(self._block):
            self._block_start, start = self._position, 0
            size = max(count, min(READ_AHEAD, self._part.size - self._position))
            self._block = os.pread(self._file.fileno(), size, self._part.offset + self._position)
        data = self._block[start : start + count]
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)
