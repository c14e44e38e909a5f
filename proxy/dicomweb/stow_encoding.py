"""The STOW-RS response in its two encodings: read an upstream's, write the client's.

DICOM JSON (PS3.18 Annex F) and the Native DICOM Model (PS3.19 Annex A.1) of the Store
Instances Response Module (PS3.18 Table 10.5.3-1); the items and merge rules are in
:mod:`proxy.dicomweb.stow_response`.

Pure: no server imports.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from typing import Any

from proxy.dicomweb.media import parse_media_type
from proxy.dicomweb.stow_response import (
    PROCESSING_FAILURE,
    Failed,
    Referenced,
    StowResponse,
    StowResult,
    parse_code,
)

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


# -- reading an upstream body ------------------------------------------------------------


def parse(body: bytes, content_type: str) -> StowResult | None:
    """The items of an upstream STOW response in DICOM JSON or Native DICOM XML; None
    when the body is neither.  The body is the upstream's, so untrusted: nesting deep
    enough to exhaust the recursion limit is unreadable too, not a crash."""
    is_xml = "xml" in parse_media_type(content_type).main
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
