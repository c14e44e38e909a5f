"""The one media type parser (proxy.dicomweb.media): Content-Type, Accept, Accept-Encoding."""

from __future__ import annotations

import pytest

from proxy.dicomweb.media import (
    MediaType,
    multipart_boundary,
    parse_accept,
    parse_media_type,
    quality,
)


@pytest.mark.parametrize(
    ("value", "main", "params"),
    [
        ("multipart/related; type=application/dicom; boundary=abc", "multipart/related",
         {"type": "application/dicom", "boundary": "abc"}),
        ('Multipart/Related; TYPE="application/dicom+json"; boundary="a b;c"', "multipart/related",
         {"type": "application/dicom+json", "boundary": "a b;c"}),
        ('multipart/related;boundary="q\\"x";type="application/dicom"', "multipart/related",
         {"type": "application/dicom", "boundary": 'q"x'}),
        ("application/dicom", "application/dicom", {}),
        ("  application/DICOM ; transfer-syntax=1.2.840.10008.1.2.1", "application/dicom",
         {"transfer-syntax": "1.2.840.10008.1.2.1"}),
        # type is a media type, so case-insensitive; other values keep their case
        ('Multipart/Related; Type="Application/DICOM"; boundary="a;B"', "multipart/related",
         {"type": "application/dicom", "boundary": "a;B"}),
        ('multipart/related; type="application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"',
         "multipart/related",
         {"type": "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"}),
        ("multipart/related; boundary = abc ; type = application/dicom", "multipart/related",
         {"boundary": "abc", "type": "application/dicom"}),
        ("application/json; charset", "application/json", {}),  # no "=": left out
        ("application/json;;q=0.5", "application/json", {"q": "0.5"}),
        ("", "", {}),
        (";q=1", "", {"q": "1"}),
    ],
)  # fmt: skip
def test_parse_media_type(value: str, main: str, params: dict[str, str]) -> None:
    parsed = parse_media_type(value)
    assert parsed == MediaType(main, params)
    assert (parsed.main, parsed.params) == parsed  # a tuple as well


@pytest.mark.parametrize(
    ("value", "mains"),
    [
        (None, []),
        ("", []),
        ("application/dicom+json", ["application/dicom+json"]),
        ("application/dicom+xml;q=0.9, application/dicom+json", ["application/dicom+xml", "application/dicom+json"]),
        ('multipart/related; type="a/b, c", */*', ["multipart/related", "*/*"]),  # quoted comma
        ("a/b,;q=1, ,", ["a/b"]),  # empty ranges left out
        ("gzip;q=0.5, *;q=0", ["gzip", "*"]),  # Accept-Encoding has the same shape
    ],
)  # fmt: skip
def test_parse_accept(value: str | None, mains: list[str]) -> None:
    assert [media.main for media in parse_accept(value)] == mains


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a/b", 1.0),
        ("a/b;q=0.5", 0.5),
        ("a/b; Q = 0", 0.0),
        ('a/b;q="0.3"', 0.3),
        ("a/b;q=bogus", 0.0),
    ],
)
def test_quality(value: str, expected: float) -> None:
    assert quality(parse_media_type(value)) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("multipart/related; boundary=abc", "abc"),
        ('Multipart/Byteranges; boundary="a b"', "a b"),
        ("multipart/related", None),
        ("multipart/related; boundary=", None),
        ("application/dicom; boundary=abc", None),
        ("", None),
    ],
)
def test_multipart_boundary(value: str, expected: str | None) -> None:
    assert multipart_boundary(value) == expected
