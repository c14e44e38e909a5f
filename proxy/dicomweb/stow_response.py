"""The STOW-RS response: read the upstream's, merge several, encode the client's.

PS3.18 section 10.5.3 and Table 10.5.3-1 (Store Instances Response Module, detailed in
Annex I): a response carries RetrieveURL (0008,1190), ReferencedSOPSequence (0008,1199)
for stored instances (each with ReferencedSOPClassUID (0008,1150),
ReferencedSOPInstanceUID (0008,1155), RetrieveURL and an optional WarningReason
(0008,1196)) and FailedSOPSequence (0008,1198) for the others (with FailureReason
(0008,1197)).  The HTTP status is 200 when all were stored without warnings, 202 when
some were stored and some failed or carry warnings, 409 when none was stored.

Pure: no server imports.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# PS3.7 Annex C status codes used by PS3.18 Annex I.
PROCESSING_FAILURE = 0x0110
REFUSED_NOT_AUTHORIZED = 0x0124
SOP_CLASS_NOT_SUPPORTED = 0x0122
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000

RETRIEVE_URL = "00081190"
REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
SOP_CLASS = "00081150"
SOP_INSTANCE = "00081155"
WARNING_REASON = "00081196"
FAILURE_REASON = "00081197"

NATIVE_NS = "http://dicom.nema.org/PS3.19/models/NativeDICOM"
_KEYWORDS = {
    RETRIEVE_URL: ("UR", "RetrieveURL"),
    REFERENCED_SOP_SEQUENCE: ("SQ", "ReferencedSOPSequence"),
    FAILED_SOP_SEQUENCE: ("SQ", "FailedSOPSequence"),
    SOP_CLASS: ("UI", "ReferencedSOPClassUID"),
    SOP_INSTANCE: ("UI", "ReferencedSOPInstanceUID"),
    WARNING_REASON: ("US", "WarningReason"),
    FAILURE_REASON: ("US", "FailureReason"),
}


@dataclass(frozen=True)
class Sop:
    """An instance as the proxy sent it: SOP Class and SOP Instance UID."""

    sop_class: str
    sop_instance: str


@dataclass(frozen=True)
class Referenced:
    sop_class: str
    sop_instance: str
    retrieve_url: str | None = None
    warning: int | None = None


@dataclass(frozen=True)
class Failed:
    sop_class: str
    sop_instance: str
    reason: int


@dataclass(frozen=True)
class StowResult:
    """One response body's items (an upstream's, or the merged one)."""

    referenced: tuple[Referenced, ...] = ()
    failed: tuple[Failed, ...] = ()

    @property
    def usable(self) -> bool:
        return bool(self.referenced or self.failed)


@dataclass(frozen=True)
class BatchReport:
    """What one upstream request did: its HTTP status (None when no answer came) and
    the resolved items for every instance it carried."""

    status: int | None
    result: StowResult


@dataclass(frozen=True)
class StowResponse:
    status: int
    result: StowResult
    retrieve_url: str


# -- reason codes ---------------------------------------------------------------------


def parse_code(value: object) -> int | None:
    """A FailureReason/WarningReason as the upstream encoded it: a number (272), a
    decimal string ("272") or the hexadecimal form PS3.7 uses ("0110", "A700", "0xA700").
    Four hex digits are read as hexadecimal because that is how the codes are defined."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    text = str(value).strip().lower().removeprefix("0x")
    try:
        if len(text) == 4 and all(c in "0123456789abcdef" for c in text):
            return int(text, 16)
        return int(text)
    except ValueError:
        return None


def reason_for_status(status: int | None) -> int:
    """The FailureReason given to every instance of a batch the upstream answered with
    no usable body (SPEC section 5)."""
    if status in (413, 503, 507):
        return OUT_OF_RESOURCES
    if status in (401, 403):
        return REFUSED_NOT_AUTHORIZED
    return PROCESSING_FAILURE


def is_content_rejection(reason: int) -> bool:
    """A9xx (data set does not match SOP class), Cxxx (cannot understand) and 0122
    (SOP class not supported): resending the same bytes cannot succeed."""
    return reason & 0xFF00 == 0xA900 or reason & 0xF000 == 0xC000 or reason == 0x0122


# -- one batch ----------------------------------------------------------------------


def resolve(status: int | None, parsed: StowResult | None, sent: Sequence[Sop]) -> BatchReport:
    """The items of one batch: the upstream's own when its body named any instance
    (those it left out get a processing failure); for a 200 whose body cannot be read,
    every instance as stored (a 200 says all were, and an instance the archive accepted
    must never be reported failed and resent); else one synthesized Failed item per
    instance with the reason its status implies."""
    if status == 200 and (parsed is None or not parsed.usable):
        stored = tuple(Referenced(sop.sop_class, sop.sop_instance) for sop in sent)
        return BatchReport(status, StowResult(stored, ()))
    if parsed is None or not parsed.usable:
        code = reason_for_status(status)
        failed = tuple(Failed(sop.sop_class, sop.sop_instance, code) for sop in sent)
        return BatchReport(status, StowResult((), failed))
    named = {item.sop_instance for item in parsed.referenced}
    named |= {item.sop_instance for item in parsed.failed}
    missing = tuple(
        Failed(sop.sop_class, sop.sop_instance, PROCESSING_FAILURE)
        for sop in sent
        if sop.sop_instance not in named
    )
    return BatchReport(status, StowResult(parsed.referenced, parsed.failed + missing))


def merge(
    reports: Sequence[BatchReport],
    rejected: Sequence[Failed],
    *,
    study_of: Mapping[str, str],
    base_url: str,
) -> StowResponse:
    """The union of every batch (PS3.18 Table 10.5.3-1) with the status of Annex I."""
    referenced = tuple(item for report in reports for item in report.result.referenced)
    failed = tuple(rejected) + tuple(item for report in reports for item in report.result.failed)
    warned = any(item.warning for item in referenced) or any(r.status == 202 for r in reports)
    if not referenced:
        statuses = {report.status for report in reports}
        status = 400 if statuses == {400} else 409
    elif failed or warned:
        status = 202
    else:
        status = 200
    studies = {study_of[item.sop_instance] for item in referenced if item.sop_instance in study_of}
    url = f"{base_url}/studies/{studies.pop()}" if len(studies) == 1 else ""
    return StowResponse(status, StowResult(referenced, failed), url)


# -- reading an upstream body ------------------------------------------------------------


def parse(body: bytes, content_type: str) -> StowResult | None:
    """The items of an upstream STOW response in DICOM JSON or Native DICOM XML; None
    when the body is neither.  The body is the upstream's, so untrusted: nesting deep
    enough to exhaust the recursion limit is unreadable too, not a crash."""
    is_xml = "xml" in content_type.lower()
    try:
        return parse_xml(body) if is_xml else parse_json(body)
    except (ValueError, TypeError, KeyError, AttributeError, ET.ParseError, RecursionError):
        return None


def parse_json(body: bytes) -> StowResult:
    """PS3.18 Annex F DICOM JSON: ``{"00081199": {"vr": "SQ", "Value": [...]}}``."""
    document = json.loads(body)
    if isinstance(document, list):
        document = document[0] if document else {}
    if not isinstance(document, dict):
        raise ValueError("not a DICOM JSON object")
    referenced = tuple(_referenced(item) for item in _json_items(document, REFERENCED_SOP_SEQUENCE))
    failed = tuple(_failed(item) for item in _json_items(document, FAILED_SOP_SEQUENCE))
    return StowResult(referenced, failed)


def _json_items(document: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    element = document.get(tag) or {}
    return [item for item in element.get("Value") or [] if isinstance(item, dict)]


def _json_value(item: dict[str, Any], tag: str) -> object | None:
    values = (item.get(tag) or {}).get("Value") or []
    return values[0] if values else None


def _referenced(item: dict[str, Any]) -> Referenced:
    url = _json_value(item, RETRIEVE_URL)
    warning = _json_value(item, WARNING_REASON)
    return Referenced(
        str(_json_value(item, SOP_CLASS) or ""),
        str(_json_value(item, SOP_INSTANCE) or ""),
        str(url) if url else None,
        parse_code(warning) if warning is not None else None,
    )


def _failed(item: dict[str, Any]) -> Failed:
    reason = parse_code(_json_value(item, FAILURE_REASON))
    return Failed(
        str(_json_value(item, SOP_CLASS) or ""),
        str(_json_value(item, SOP_INSTANCE) or ""),
        PROCESSING_FAILURE if reason is None else reason,
    )


def parse_xml(body: bytes) -> StowResult:
    """PS3.19 A.1 Native DICOM Model: ``<DicomAttribute tag="00081199" vr="SQ">``."""
    root = ET.fromstring(body)
    referenced = tuple(
        _referenced(_xml_item(item)) for item in _xml_items(root, REFERENCED_SOP_SEQUENCE)
    )
    failed = tuple(_failed(_xml_item(item)) for item in _xml_items(root, FAILED_SOP_SEQUENCE))
    return StowResult(referenced, failed)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _xml_items(root: ET.Element, tag: str) -> list[ET.Element]:
    for attribute in root:
        if _local(attribute.tag) == "DicomAttribute" and attribute.get("tag", "").upper() == tag:
            return [item for item in attribute if _local(item.tag) == "Item"]
    return []


def _xml_item(item: ET.Element) -> dict[str, Any]:
    """An XML Item in the JSON shape, so one reader serves both encodings."""
    converted: dict[str, Any] = {}
    for attribute in item:
        values = [value.text or "" for value in attribute if _local(value.tag) == "Value"]
        converted[attribute.get("tag", "").upper()] = {"Value": values}
    return converted


# -- encoding the client's response -------------------------------------------------------


def to_json(response: StowResponse) -> bytes:
    document: dict[str, Any] = {RETRIEVE_URL: _element(RETRIEVE_URL, response.retrieve_url)}
    if response.result.referenced:
        document[REFERENCED_SOP_SEQUENCE] = {
            "vr": "SQ",
            "Value": [_dataset(_referenced_values(i)) for i in response.result.referenced],
        }
    if response.result.failed:
        document[FAILED_SOP_SEQUENCE] = {
            "vr": "SQ",
            "Value": [_dataset(_failed_values(i)) for i in response.result.failed],
        }
    return json.dumps(document).encode()


def _element(tag: str, value: object) -> dict[str, Any]:
    element: dict[str, Any] = {"vr": _KEYWORDS[tag][0]}
    if value not in (None, ""):
        element["Value"] = [value]
    return element


def _dataset(values: Iterable[tuple[str, object]]) -> dict[str, Any]:
    return {tag: _element(tag, value) for tag, value in values}


def _referenced_values(item: Referenced) -> list[tuple[str, object]]:
    values: list[tuple[str, object]] = [
        (SOP_CLASS, item.sop_class),
        (SOP_INSTANCE, item.sop_instance),
    ]
    if item.retrieve_url:
        values.append((RETRIEVE_URL, item.retrieve_url))
    if item.warning is not None:
        values.append((WARNING_REASON, item.warning))
    return values


def _failed_values(item: Failed) -> list[tuple[str, object]]:
    return [
        (SOP_CLASS, item.sop_class),
        (SOP_INSTANCE, item.sop_instance),
        (FAILURE_REASON, item.reason),
    ]


def to_xml(response: StowResponse) -> bytes:
    """PS3.19 A.1 Native DICOM Model."""
    root = ET.Element("NativeDicomModel", {"xmlns": NATIVE_NS})
    _xml_attribute(root, RETRIEVE_URL, response.retrieve_url)
    for tag, items in (
        (REFERENCED_SOP_SEQUENCE, [_referenced_values(i) for i in response.result.referenced]),
        (FAILED_SOP_SEQUENCE, [_failed_values(i) for i in response.result.failed]),
    ):
        if not items:
            continue
        sequence = _xml_attribute(root, tag, None)
        for number, values in enumerate(items, start=1):
            item = ET.SubElement(sequence, "Item", {"number": str(number)})
            for item_tag, value in values:
                _xml_attribute(item, item_tag, value)
    return (
        b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode").encode()
    )


def _xml_attribute(parent: ET.Element, tag: str, value: object | None) -> ET.Element:
    vr, keyword = _KEYWORDS[tag]
    element = ET.SubElement(parent, "DicomAttribute", {"tag": tag, "vr": vr, "keyword": keyword})
    if value not in (None, ""):
        ET.SubElement(element, "Value", {"number": "1"}).text = str(value)
    return element
