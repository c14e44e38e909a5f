"""The dead letter: instances whose STOW finally failed for a reason time or an operator
can fix (retries exhausted, 401/403/413/507, a non-content failure reason).

SPEC section 5.  One directory per instance under ``--dead-letter-dir``::

    <id>/record.json    time, UIDs, upstream status, failure reason, attempts, request id
    <id>/part-000000    the spooled parts, as received
    <id>/metadata.json  JSON bodies only: the instance's metadata object

An entry is built under a dot-name and renamed into place, so a listing never sees a
half-written one.  A part is copied out of its request's spool file in the kernel
(``copy_file_range``; the spool is removed after the request); a part that is a whole
file already (a replayed entry's) is hard-linked.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from proxy.dicomweb.stow_response import Sop
from proxy.errors import NotFound
from proxy.stow.parts import Instance, Kind, SpooledPart

_NO_KERNEL_COPY = frozenset({errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP})

RECORD = "record.json"
METADATA = "metadata.json"
_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class Record:
    id: str
    time: str
    request_id: str
    target: str  # "studies" or "studies/{uid}", relative to the upstream base
    kind: str
    study: str
    series: str
    sop_class: str
    sop_instance: str
    status: int | None
    reason: int
    attempts: int
    detail: str
    parts: list[dict[str, Any]] = field(default_factory=list)


class DeadLetter:
    def __init__(self, root: Path) -> None:
        self.root = root

    def keep(self, instance: Instance, kind: Kind, record: Record) -> Record:
        """Move one instance's parts in and write its record (blocking: run in a thread)."""
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".{record.id}"
        staging.mkdir()
        try:
            return self._fill(staging, instance, record)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)  # no half-kept entry
            raise

    def _fill(self, staging: Path, instance: Instance, record: Record) -> Record:
        for number, part in enumerate(instance.parts):
            name = f"part-{number:06d}"
            _extract(part, staging / name)
            record.parts.append(
                {"file": name, "content_type": part.content_type, "location": part.content_location}
            )
        if instance.metadata:
            (staging / METADATA).write_bytes(instance.metadata)
        _write_json(staging / RECORD, asdict(record))
        staging.rename(self.root / record.id)
        return record

    def records(self) -> list[dict[str, Any]]:
        if not self.root.is_dir():
            return []
        found = [self._read(entry) for entry in self.root.iterdir() if _ID.match(entry.name)]
        return sorted((r for r in found if r), key=lambda record: str(record["time"]))

    def count(self) -> int:
        if not self.root.is_dir():
            return 0
        return sum(1 for entry in self.root.iterdir() if _ID.match(entry.name))

    def record(self, entry_id: str) -> dict[str, Any]:
        record = self._read(self._path(entry_id))
        if record is None:
            raise NotFound(f"no dead-letter entry {entry_id}")
        return record

    def instance(self, entry_id: str) -> tuple[Instance, Kind, str]:
        """The entry as an instance ready to be sent again, its kind and its target."""
        record = self.record(entry_id)
        path = self._path(entry_id)
        parts = tuple(_part(path / p["file"], p) for p in record["parts"])
        metadata = (path / METADATA).read_bytes() if (path / METADATA).exists() else b""
        sop = Sop(record["sop_class"], record["sop_instance"])
        instance = Instance(record["study"], record["series"], sop, parts, metadata)
        return instance, Kind(record["kind"]), str(record["target"])

    def update(self, entry_id: str, **changes: Any) -> None:
        record = self.record(entry_id)
        record.update(changes)
        _write_json(self._path(entry_id) / RECORD, record)

    def drop(self, entry_id: str) -> None:
        self.record(entry_id)
        shutil.rmtree(self._path(entry_id))

    def _path(self, entry_id: str) -> Path:
        if not _ID.match(entry_id):
            raise NotFound(f"no dead-letter entry {entry_id}")
        return self.root / entry_id

    def _read(self, path: Path) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads((path / RECORD).read_text())
        except (OSError, ValueError):
            return None
        return data


def new_record(instance: Instance, kind: Kind, **fields: Any) -> Record:
    return Record(
        id=uuid.uuid4().hex,
        time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        kind=kind.value,
        study=instance.study,
        series=instance.series,
        sop_class=instance.sop.sop_class,
        sop_instance=instance.sop.sop_instance,
        **fields,
    )


def _part(path: Path, described: dict[str, Any]) -> SpooledPart:
    size = path.stat().st_size
    return SpooledPart(path, size, described["content_type"], described["location"])


def _extract(part: SpooledPart, target: Path) -> None:
    if part.offset == 0 and part.path.stat().st_size == part.size:
        try:
            os.link(part.path, target)
            return
        except OSError:
            pass  # another filesystem: copy
    with part.path.open("rb") as source, target.open("wb") as sink:
        _copy_range(source.fileno(), sink.fileno(), part.offset, part.size)


def _copy_range(source: int, sink: int, offset: int, size: int) -> None:
    """``size`` bytes from ``offset`` of ``source`` to the end of ``sink``: in the
    kernel where it can, through a buffer across filesystems that refuse that."""
    done = 0
    while done < size:
        try:
            copied = os.copy_file_range(source, sink, size - done, offset + done)
        except OSError as exc:
            if exc.errno not in _NO_KERNEL_COPY:
                raise
            copied = os.write(sink, os.pread(source, min(size - done, 1024**2), offset + done))
        if copied == 0:
            raise OSError(errno.EIO, "a spool file is shorter than the parts it holds")
        done += copied


def _write_json(path: Path, data: dict[str, Any]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2))
    temporary.replace(path)
