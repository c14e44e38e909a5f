"""Byte-range parsing against a body's size (RFC 9110 section 14)."""

from __future__ import annotations

import pytest

from proxy.cache.ranges import MAX_RANGES, content_range, if_range_holds, requested

SIZE = 1000


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-499", [(0, 499)]),
        ("bytes=500-", [(500, 999)]),
        ("bytes=-100", [(900, 999)]),
        ("bytes=-5000", [(0, 999)]),          # a suffix longer than the body: all of it
        ("bytes=900-5000", [(900, 999)]),     # the end clamped to the body
        ("bytes=0-0", [(0, 0)]),
        ("bytes = 0-9 , 20-29", [(0, 9), (20, 29)]),
        ("bytes=20-29,0-9", [(0, 9), (20, 29)]),          # sent in order of position
        ("bytes=0-99,50-149,150-199", [(0, 199)]),         # overlapping and adjacent merged
        ("bytes=0-9,2000-3000", [(0, 9)]),                 # the unsatisfiable one dropped
        ("BYTES=0-9", [(0, 9)]),
        ("bytes=1000-", []),                               # 416
        ("bytes=2000-3000", []),
        ("bytes=-0", []),
        ("items=0-9", None),                               # another unit: ignored
        ("bytes=", None),
        ("bytes=9-0", None),                               # invalid: ignored
        ("bytes=a-b", None),
        ("bytes=-", None),
        ("bytes=0-9;x", None),
        ("bytes=" + ",".join(f"{i}-{i}" for i in range(MAX_RANGES + 1)), None),  # abuse
    ],
)  # fmt: skip
def test_requested(header: str, expected: list[tuple[int, int]] | None) -> None:
    assert requested(header, SIZE) == expected


def test_an_empty_body_satisfies_no_range() -> None:
    assert requested("bytes=0-", 0) == []
    assert requested("bytes=-10", 0) == []


def test_content_range() -> None:
    assert content_range((0, 499), 1000) == "bytes 0-499/1000"


@pytest.mark.parametrize(
    ("if_range", "holds"),
    [
        (None, True),
        ('"abc"', True),
        ('"other"', False),
        ('W/"abc"', False),                        # If-Range takes a strong match
        ("Tue, 01 Dec 2026 10:00:00 GMT", False),  # a date: hits carry no Last-Modified
    ],
)  # fmt: skip
def test_if_range(if_range: str | None, holds: bool) -> None:
    assert if_range_holds(if_range, '"abc"') is holds
