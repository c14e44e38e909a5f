"""PS3.18 Table 10.5.3-1 / Annex I: reading, merging and encoding STOW-RS responses."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from proxy.dicomweb import stow_encoding as encoding
from proxy.dicomweb import stow_response as sr
from proxy.dicomweb.stow_response import BatchReport, Failed, Referenced, Sop, StowResult

CT = "1.2.840.10008.5.1.4.1.1.2"
BASE = "http://proxy/dicom-web"


def ref(uid: str, warning: int | None = None) -> Referenced:
    return Referenced(CT, uid, f"{BASE}/studies/S/series/X/instances/{uid}", warning)


def fail(uid: str, reason: int) -> Failed:
    return Failed(CT, uid, reason)


@pytest.mark.parametrize(
    ("value", "code"),
    [(272, 0x0110), ("272", 272), ("0110", 0x0110), ("A700", 0xA700), ("a700", 0xA700),
     ("0xC000", 0xC000), ("49152", 0xC000), ("B000", 0xB000), ("nonsense", None), (True, None)],
)  # fmt: skip
def test_parse_code_accepts_numbers_and_strings(value: object, code: int | None) -> None:
    assert sr.parse_code(value) == code


@pytest.mark.parametrize(
    ("status", "reason"),
    [(413, 0xA700), (503, 0xA700), (507, 0xA700), (401, 0x0124), (403, 0x0124),
     (500, 0x0110), (None, 0x0110), (400, 0x0110)],
)  # fmt: skip
def test_reason_for_status(status: int | None, reason: int) -> None:
    assert sr.reason_for_status(status) == reason


@pytest.mark.parametrize(
    ("reason", "content"),
    [(0xA900, True), (0xA9FF, True), (0xC000, True), (0xC123, True), (0x0122, True),
     (0xA700, False), (0x0110, False), (0x0124, False)],
)  # fmt: skip
def test_content_rejections(reason: int, content: bool) -> None:
    assert sr.is_content_rejection(reason) is content


def test_resolve_synthesizes_failures_when_the_body_is_unusable() -> None:
    sent = [Sop(CT, "1"), Sop(CT, "2")]
    report = sr.resolve(503, None, sent)
    assert report.result.failed == (fail("1", 0xA700), fail("2", 0xA700))
    assert sr.resolve(401, StowResult(), sent).result.failed[0].reason == 0x0124


@pytest.mark.parametrize("body", [None, StowResult()], ids=["unreadable", "empty"])
def test_a_200_whose_body_cannot_be_read_stored_every_instance(body: StowResult | None) -> None:
    """SPEC section 5: an instance the archive accepted is never reported failed."""
    report = sr.resolve(200, body, [Sop(CT, "1"), Sop(CT, "2")])
    assert report.result.referenced == (Referenced(CT, "1"), Referenced(CT, "2"))
    assert report.result.failed == ()


def test_resolve_keeps_the_upstream_items_and_fills_in_the_missing() -> None:
    parsed = StowResult((ref("1"),), (fail("2", 0xA900),))
    report = sr.resolve(202, parsed, [Sop(CT, "1"), Sop(CT, "2"), Sop(CT, "3")])
    assert report.result.referenced == (ref("1"),)
    assert report.result.failed == (fail("2", 0xA900), fail("3", 0x0110))


MERGES = [
    # (name, reports, rejected, status)
    ("all stored", [(200, ["1", "2"], []), (200, ["3"], [])], [], 200),
    ("stored with a warning", [(200, ["1"], []), (200, ["w"], [])], [], 202),
    ("an upstream 202", [(202, ["1"], [])], [], 202),
    ("some failed", [(200, ["1"], []), (503, [], ["2"])], [], 202),
    ("a rejected part", [(200, ["1"], [])], [fail("", 0xC000)], 202),
    ("none stored", [(503, [], ["1"]), (409, [], ["2"])], [], 409),
    ("every batch 400", [(400, [], ["1"]), (400, [], ["2"])], [], 400),
    ("nothing sent", [], [fail("", 0xC000)], 409),
]


@pytest.mark.parametrize(
    ("name", "reports", "rejected", "status"), MERGES, ids=[m[0] for m in MERGES]
)
def test_merge_status(
    name: str, reports: list[tuple[int, list[str], list[str]]], rejected: list[Failed], status: int
) -> None:
    built = [
        BatchReport(
            code,
            StowResult(
                tuple(ref(u, 0xB000 if u == "w" else None) for u in stored),
                tuple(fail(u, 0xA700) for u in failed),
            ),
        )
        for code, stored, failed in reports
    ]
    merged = sr.merge(built, rejected, study_of={}, base_url=BASE)
    assert merged.status == status
    assert len(merged.result.referenced) == sum(len(r[1]) for r in reports)
    assert len(merged.result.failed) == sum(len(r[2]) for r in reports) + len(rejected)


@pytest.mark.parametrize(
    ("studies", "url"),
    [({"1": "9.1", "2": "9.1"}, f"{BASE}/studies/9.1"), ({"1": "9.1", "2": "9.2"}, "")],
)
def test_top_level_retrieve_url(studies: dict[str, str], url: str) -> None:
    report = BatchReport(200, StowResult((ref("1"), ref("2"))))
    assert sr.merge([report], [], study_of=studies, base_url=BASE).retrieve_url == url


ORTHANC_STYLE = {
    "00081190": {"vr": "UR", "Value": ["http://up/dicom-web/studies/9"]},
    "00081199": {
        "vr": "SQ",
        "Value": [
            {
                "00081150": {"vr": "UI", "Value": [CT]},
                "00081155": {"vr": "UI", "Value": ["1"]},
                "00081190": {"vr": "UR", "Value": ["http://up/x/1"]},
                "00081196": {"vr": "US", "Value": ["B000"]},
            }
        ],
    },
    "00081198": {
        "vr": "SQ",
        "Value": [
            {
                "00081150": {"vr": "UI", "Value": [CT]},
                "00081155": {"vr": "UI", "Value": ["2"]},
                "00081197": {"vr": "US", "Value": [272]},
            }
        ],
    },
}


def test_parse_json_reads_numbers_and_strings() -> None:
    parsed = encoding.parse(json.dumps(ORTHANC_STYLE).encode(), "application/dicom+json")
    assert parsed == StowResult(
        (Referenced(CT, "1", "http://up/x/1", 0xB000),), (Failed(CT, "2", 0x0110),)
    )


@pytest.mark.parametrize("body", [b"", b"not json", b"[1]", b"<html/>"])
def test_parse_unusable_bodies(body: bytes) -> None:
    parsed = encoding.parse(body, "application/json")
    assert parsed is None or not parsed.usable


def test_json_and_xml_encodings_round_trip() -> None:
    result = StowResult((ref("1"), ref("2", 0xB007)), (fail("3", 0xA700), fail("", 0xC000)))
    response = sr.StowResponse(202, result, f"{BASE}/studies/S")
    from_json = encoding.parse(encoding.to_json(response), "application/dicom+json")
    from_xml = encoding.parse(encoding.to_xml(response), "application/dicom+xml")
    assert from_json == from_xml == result
    document = json.loads(encoding.to_json(response))
    assert document["00081190"] == {"vr": "UR", "Value": [f"{BASE}/studies/S"]}
    assert document["00081198"]["Value"][0]["00081197"] == {"vr": "US", "Value": [0xA700]}
    root = ET.fromstring(encoding.to_xml(response))
    assert root.tag == "{http://dicom.nema.org/PS3.19/models/NativeDICOM}NativeDicomModel"


def test_empty_retrieve_url_and_sequences_left_out() -> None:
    response = sr.StowResponse(409, StowResult((), (fail("1", 0x0110),)), "")
    document = json.loads(encoding.to_json(response))
    assert document["00081190"] == {"vr": "UR"}
    assert "00081199" not in document


def test_nesting_deeper_than_the_recursion_limit_is_unreadable_not_a_crash() -> None:
    assert encoding.parse(b"[" * 100_000, "application/dicom+json") is None
