"""Identify the instances of a spooled STOW-RS request: SOP Class/Instance, Study and
Series UIDs, from a Part 10 header (with pydicom, never the pixel data) or from the
JSON/XML metadata parts and the bulk data parts they reference (PS3.18 section
10.5.1.1.2).  A part that is not DICOM becomes a FailedSOPSequence item (0xC000), not an
error.

Blocking: runs in a worker thread.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import pydicom
import pydicom.filereader
from pydicom.tag import BaseTag

from proxy.dicomweb.media import parse_media_type
from proxy.dicomweb.stow_response import Sop
from proxy.errors import MalformedBody, PayloadTooLarge
from proxy.stow.parts import Instance, Kind, Spooled, SpooledPart

MAX_METADATA_BYTES = 64 * 1024**2
SERIES_INSTANCE_UID = 0x0020000E
_Doc = TypeVar("_Doc")


def identify_metadata(kind: Kind, parts: list[SpooledPart], result: Spooled) -> None:
    """The instances of a JSON or XML request, once every part is spooled."""
    try:
        if kind is Kind.JSON:
            _identify_json(parts, result)
        else:
            _identify_xml(parts, result)
    except RecursionError:
        # The client's metadata is nested deeper than any DICOM data set can be.
        raise MalformedBody("a metadata part is nested too deeply") from None


def dicom_instance(part: SpooledPart) -> Instance | None:
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
            result.add(_metadata_instance(_json_uid, item, refs, metadata))


def _identify_xml(parts: list[SpooledPart], result: Spooled) -> None:
    """PS3.18 10.5.1.1.2: one Native DICOM Model part per instance."""
    bulk = {p.content_location: p for p in parts if not _is_metadata(p, Kind.XML)}
    for part in parts:
        if not _is_metadata(part, Kind.XML):
            continue
        try:
            root = ET.fromstring(_read_metadata(part))
        except ET.ParseError:
            result.add(None)
            continue
        uris = [e.get("uri", "") for e in root.iter() if e.tag.endswith("BulkData")]
        refs = (part, *_referenced_parts(uris, bulk))
        result.add(_metadata_instance(_xml_uid, root, refs, b""))


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
