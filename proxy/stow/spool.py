"""Spool a STOW-RS request body to disk, one file per part, and identify each instance.

SPEC section 5: the body is read as a stream; each part goes to its own file under the
request's spool directory; SOP Class/Instance, Study and Series UIDs are read from the
instance header with pydicom (never the pixel data).  A part that is not DICOM becomes a
FailedSOPSequence item (0xC000), not an error.  The whole body is spooled before anything
is sent, so a malformed body or a client that goes away sends nothing upstream.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import json
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiofiles
import pydicom

from proxy.dicomweb.multipart import MediaType, MultipartReader, boundary_of, parse_media_type
from proxy.dicomweb.stow_response import CANNOT_UNDERSTAND, Failed, Sop
from proxy.errors import InsufficientStorage, MalformedBody, PayloadTooLarge, UnsupportedMediaType

MAX_METADATA_BYTES = 64 * 1024**2
WRITE_SIZE = 1024**2
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_Doc = TypeVar("_Doc")


class Kind(enum.Enum):
    """The three STOW-RS request representations of PS3.18 section 10.5.1.1."""

    DICOM = "application/dicom"
    JSON = "application/dicom+json"
    XML = "application/dicom+xml"


@dataclass(frozen=True)
class SpooledPart:
    path: Path
    size: int
    content_type: str
    content_location: str = ""


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
    """Write every part under ``directory`` and identify the instances.

    Part 10 instances are identified in worker threads while the next parts are still
    arriving; JSON/XML metadata is read once every part (the bulk data) is in."""
    media = parse_media_type(content_type)
    kind = kind_of(media)
    directory.mkdir(parents=True, exist_ok=True)
    params = tuple((k, v) for k, v in media.params.items() if k == "transfer-syntax")
    result = Spooled(kind, params=params)
    loop = asyncio.get_running_loop()
    pending: list[asyncio.Future[Instance | None]] = []

    def identify(part: SpooledPart) -> None:
        if kind is Kind.DICOM:
            pending.append(loop.run_in_executor(None, _dicom_instance, part))

    try:
        parts = await _receive(chunks, media, directory, identify)
        for instance in await asyncio.gather(*pending):
            _add(result, instance)
        if kind is not Kind.DICOM:
            await loop.run_in_executor(None, _identify, kind, parts, result)
    except BaseException:
        for future in pending:
            future.cancel()
        raise
    return result


async def _receive(
    chunks: AsyncIterable[bytes],
    media: MediaType,
    directory: Path,
    on_part: Callable[[SpooledPart], None],
) -> list[SpooledPart]:
    if media.main == "application/dicom":
        part = await _write(chunks, directory / "part-000000", "application/dicom", "")
        on_part(part)
        return [part]
    reader = MultipartReader(chunks, boundary_of(media))
    parts: list[SpooledPart] = []
    while (headers := await reader.next_part()) is not None:
        path = directory / f"part-{len(parts):06d}"
        content_type = headers.get("content-type", "application/dicom")
        location = headers.get("content-location", "")
        parts.append(await _write(_part_body(reader), path, content_type, location))
        on_part(parts[-1])
    if not parts:
        raise MalformedBody("the multipart body has no parts")
    return parts


async def _part_body(reader: MultipartReader) -> AsyncIterator[bytes]:
    while chunk := await reader.read():
        yield chunk


async def _write(
    chunks: AsyncIterable[bytes], path: Path, content_type: str, location: str
) -> SpooledPart:
    """One part to one file; a full disk is a 507 (the caller removes the directory).

    Small network chunks are gathered into writes of about :data:`WRITE_SIZE` so the
    worker-thread hop per write stays cheap."""
    size = 0
    pending = bytearray()
    try:
        async with aiofiles.open(path, "wb") as handle:
            async for chunk in chunks:
                pending += chunk
                size += len(chunk)
                if len(pending) >= WRITE_SIZE:
                    await handle.write(bytes(pending))
                    pending.clear()
            await handle.write(bytes(pending))
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            raise InsufficientStorage("the proxy's spool disk is full") from exc
        raise
    return SpooledPart(path, size, content_type, location)


# -- identification (runs in a worker thread) -----------------------------------------


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
    """The UIDs from a Part 10 header; pixel data and large values are never read."""
    try:
        # specific_tags would be slower: pydicom still walks every element.
        dataset = pydicom.dcmread(part.path, stop_before_pixels=True, defer_size=4096)
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
    return part.path.read_bytes()


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
