"""Spool a STOW-RS request body to disk, part after part, and identify each instance.

SPEC section 5: the body is read as a stream; its parts go one after the other into one
file under the request's spool directory; SOP Class/Instance, Study and Series UIDs are
read from the instance header with pydicom (never the pixel data).  A part that is not
DICOM becomes a FailedSOPSequence item (0xC000), not an error.  The whole body is spooled
before anything is sent, so a malformed body or a client that goes away sends nothing
upstream.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import io
import json
import os
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypeVar, cast

import pydicom
import pydicom.filereader
from pydicom.tag import BaseTag

from proxy.dicomweb.multipart import MediaType, MultipartReader, boundary_of, parse_media_type
from proxy.dicomweb.stow_response import CANNOT_UNDERSTAND, Failed, Sop
from proxy.errors import InsufficientStorage, MalformedBody, PayloadTooLarge, UnsupportedMediaType

MAX_METADATA_BYTES = 64 * 1024**2
BODY = "body"
WRITE_SIZE = 1024**2
IN_FLIGHT = 4
READ_AHEAD = 64 * 1024
SERIES_INSTANCE_UID = 0x0020000E
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_Doc = TypeVar("_Doc")
_Result = TypeVar("_Result")


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


def kind_of(media: MediaType) -> Kind:
    """415 for anything but the representations STOW-RS defines."""
    if media.main == "application/dicom":
        return Kind.DICOM
    if media.main == "multipart/related":
        part_type = parse_media_type(media.params.get("type", "application/dicom")).main
        for kind in Kind:
            if kind.value == part_type:
                return kind
    raise UnsupportedMediaType(
        'STOW-RS accepts multipart/related; type="application/dicom" (or dicom+json, '
        "dicom+xml) and application/dicom"
    )


async def spool(chunks: AsyncIterable[bytes], content_type: str, directory: Path) -> Spooled:
    """Write every part into ``directory``/body and identify the instances.

    Part 10 instances are identified on the spool thread as soon as they are written,
    while the next parts are still arriving; JSON/XML metadata is read once every part
    (the bulk data) is in."""
    media = parse_media_type(content_type)
    kind = kind_of(media)
    directory.mkdir(parents=True, exist_ok=True)
    params = tuple((k, v) for k, v in media.params.items() if k == "transfer-syntax")
    result = Spooled(kind, params=params)
    with SpoolFile(directory / BODY) as body:
        identified: list[asyncio.Future[Instance | None]] = []

        def identify(part: SpooledPart) -> None:
            if kind is Kind.DICOM:
                identified.append(body.run(_dicom_instance, part))

        parts = await _receive(chunks, media, body, identify)
        await body.close()
        for instance in await asyncio.gather(*identified):
            _add(result, instance)
        if kind is not Kind.DICOM:
            await asyncio.to_thread(_identify, kind, parts, result)
    return result


async def _receive(
    chunks: AsyncIterable[bytes],
    media: MediaType,
    body: SpoolFile,
    on_part: Callable[[SpooledPart], None],
) -> list[SpooledPart]:
    if media.main == "application/dicom":
        part = await body.part(chunks, "application/dicom", "")
        on_part(part)
        return [part]
    reader = MultipartReader(chunks, boundary_of(media))
    parts: list[SpooledPart] = []
    while (headers := await reader.next_part()) is not None:
        content_type = headers.get("content-type", "application/dicom")
        location = headers.get("content-location", "")
        parts.append(await body.part(_part_body(reader), content_type, location))
        on_part(parts[-1])
    if not parts:
        raise MalformedBody("the multipart body has no parts")
    return parts


async def _part_body(reader: MultipartReader) -> AsyncIterator[bytes]:
    while chunk := await reader.read():
        yield chunk


class SpoolFile:
    """A request's parts one after the other in one file, written by a thread of the
    request's own while the event loop goes on reading the body.

    One file, not one per part: creating a file can cost more than writing half a
    megabyte into one (about 1 ms per create on this project's test machine), and a
    study upload has thousands of parts.  Network chunks are gathered into writes of
    about :data:`WRITE_SIZE`, so a typical instance costs one thread hop, and at most
    :data:`IN_FLIGHT` writes wait: memory stays bounded however fast the client sends.
    Leaving the ``with`` block waits for the write in progress and cancels the rest, so
    nothing is written after it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._size = 0
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="stow-spool")
        self._writes: deque[asyncio.Future[None]] = deque()
        self._file: BinaryIO | None = None  # touched by the spool thread only

    def __enter__(self) -> SpoolFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._thread.shutdown(wait=True, cancel_futures=True)
        if self._file is not None:
            self._file.close()

    def run(self, function: Callable[..., _Result], *args: Any) -> asyncio.Future[_Result]:
        """``function(*args)`` on the spool thread, after every write given so far."""
        return asyncio.wrap_future(self._thread.submit(function, *args))

    async def part(
        self, chunks: AsyncIterable[bytes], content_type: str, location: str
    ) -> SpooledPart:
        offset = self._size
        pending = bytearray()
        async for chunk in chunks:
            pending += chunk
            if len(pending) >= WRITE_SIZE:
                await self._write(pending)
                pending = bytearray()
        await self._write(pending)
        return SpooledPart(self.path, self._size - offset, content_type, location, offset)

    async def close(self) -> None:
        """Every write done and the file closed; a full disk surfaces here at the latest."""
        self._writes.append(self.run(self._close))
        while self._writes:
            await self._writes.popleft()

    async def _write(self, data: bytearray) -> None:
        self._size += len(data)
        write = self.run(self._put, data)
        # A failed write behind the one that raised (the disk stays full) is not news.
        write.add_done_callback(lambda done: done.cancelled() or done.exception())
        self._writes.append(write)
        while self._writes and (len(self._writes) > IN_FLIGHT or self._writes[0].done()):
            await self._writes.popleft()

    def _put(self, data: bytearray) -> None:
        try:
            if self._file is None:
                self._file = open(self.path, "wb", buffering=0)  # noqa: SIM115 - see _close
            view = memoryview(data)
            while view:
                view = view[self._file.write(view) or 0 :]
        except OSError as exc:
            if exc.errno in _NO_SPACE:
                raise InsufficientStorage("the proxy's spool disk is full") from exc
            raise

    def _close(self) -> None:
        if self._file is not None:  # opened by the first part's first write
            self._file.close()
            self._file = None


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


# -- identification (runs in a worker thread) ------------------------------------------


def _identify(kind: Kind, parts: list[SpooledPart], result: Spooled) -> None:
    try:
        if kind is Kind.JSON:
            _identify_json(parts, result)
        else:
            _identify_xml(parts, result)
    except RecursionError:
        # The client's metadata is nested deeper than any DICOM data set can be.
        raise MalformedBody("a metadata part is nested too deeply") from None


def _add(result: Spooled, instance: Instance | None) -> None:
    if instance is None:
        result.rejected.append(Failed("", "", CANNOT_UNDERSTAND))
    else:
        result.instances.append(instance)


def _dicom_instance(part: SpooledPart) -> Instance | None:
    """The UIDs from a Part 10 header; parsing stops after Series Instance UID, the last
    of them in tag order (PS3.5 section 7.1), so pixel data and the rest of the header
    are never read."""
    try:
        with part.open() as handle:
            dataset = pydicom.filereader.read_partial(
                handle, stop_when=_after_series_uid, defer_size=4096
            )
        sop_class = dataset.get("SOPClassUID") or dataset.file_meta.MediaStorageSOPClassUID
        values = (str(sop_class), str(dataset.SOPInstanceUID), str(dataset.StudyInstanceUID))
        series = str(dataset.get("SeriesInstanceUID", ""))
    # pydicom raises many exception types on bytes that are not DICOM; any of them
    # means "cannot understand" (0xC000) for this part and nothing more.
    except Exception:
        return None
    if not all(values):
        return None
    return Instance(values[2], series, Sop(values[0], values[1]), (part,))


def _after_series_uid(tag: BaseTag, vr: str | None, length: int) -> bool:
    return int(tag) > SERIES_INSTANCE_UID


def _identify_json(parts: list[SpooledPart], result: Spooled) -> None:
    """PS3.18 10.5.1.1.2: metadata parts hold a DICOM JSON array; bulk data parts are
    referenced from it by BulkDataURI = their Content-Location."""
    bulk = {p.content_location: p for p in parts if not _is_metadata(p, Kind.JSON)}
    for part in parts:
        if not _is_metadata(part, Kind.JSON):
            continue
        for item in _json_items(part):
            refs = _referenced_parts(_json_bulk_uris(item), bulk)
            metadata = json.dumps(item, separators=(",", ":")).encode()
            _add(result, _metadata_instance(_json_uid, item, refs, metadata))


def _identify_xml(parts: list[SpooledPart], result: Spooled) -> None:
    """PS3.18 10.5.1.1.2: one Native DICOM Model part per instance."""
    bulk = {p.content_location: p for p in parts if not _is_metadata(p, Kind.XML)}
    for part in parts:
        if not _is_metadata(part, Kind.XML):
            continue
        try:
            root = ET.fromstring(_read_metadata(part))
        except ET.ParseError:
            _add(result, None)
            continue
        uris = [e.get("uri", "") for e in root.iter() if e.tag.endswith("BulkData")]
        refs = (part, *_referenced_parts(uris, bulk))
        _add(result, _metadata_instance(_xml_uid, root, refs, b""))


def _is_metadata(part: SpooledPart, kind: Kind) -> bool:
    return parse_media_type(part.content_type).main == kind.value


def _read_metadata(part: SpooledPart) -> bytes:
    if part.size > MAX_METADATA_BYTES:
        raise PayloadTooLarge(f"a metadata part is larger than {MAX_METADATA_BYTES} bytes")
    return part.read()


def _json_items(part: SpooledPart) -> list[dict[str, Any]]:
    try:
        document = json.loads(_read_metadata(part))
    except ValueError as exc:
        raise MalformedBody("a application/dicom+json part is not valid JSON") from exc
    items = document if isinstance(document, list) else [document]
    return [item for item in items if isinstance(item, dict)]


def _json_bulk_uris(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        uri = node.get("BulkDataURI")
        if isinstance(uri, str):
            yield uri
        for value in node.values():
            yield from _json_bulk_uris(value)
    elif isinstance(node, list):
        for value in node:
            yield from _json_bulk_uris(value)


def _referenced_parts(uris: Iterable[str], bulk: dict[str, SpooledPart]) -> tuple[SpooledPart, ...]:
    """The bulk parts named by ``uris``, each once, in body order; a URI no part carries
    is left for the upstream to resolve."""
    wanted = {uri for uri in uris if uri in bulk}
    return tuple(part for location, part in bulk.items() if location in wanted)


def _json_uid(item: dict[str, Any], tag: str) -> str:
    """A UI element's first value (PS3.18 F.2.2); anything else shaped is no UID."""
    element = item.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    if isinstance(values, list) and values and isinstance(values[0], str):
        return values[0]
    return ""


def _xml_uid(root: ET.Element, tag: str) -> str:
    for element in root:
        if element.get("tag", "").upper() == tag:
            for value in element:
                return str(value.text or "").strip()
    return ""


def _metadata_instance(
    uid: Callable[[_Doc, str], str], document: _Doc, parts: tuple[SpooledPart, ...], metadata: bytes
) -> Instance | None:
    sop_class, sop_instance = uid(document, "00080016"), uid(document, "00080018")
    study, series = uid(document, "0020000D"), uid(document, "0020000E")
    if not (sop_class and sop_instance and study):
        return None
    return Instance(study, series, Sop(sop_class, sop_instance), parts, metadata)
