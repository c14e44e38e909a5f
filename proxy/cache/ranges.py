"""Byte ranges of a stored body (RFC 9110 section 14): which ones a request asks for.

Pure: no server imports.  :func:`requested` reads ``Range`` against a body's size and
gives what to send: every range, merged and in order; :data:`UNSATISFIABLE` (416); or
None, meaning the header is to be ignored and the whole body sent with 200 — as RFC 9110
section 14.2 lets a server do with a header it cannot use (another unit, bad syntax)
and as it advises for a request of many small or overlapping ranges (section 15.3.7).
"""

from __future__ import annotations

import re

ByteRange = tuple[int, int]  # first and last byte positions, inclusive

# More ranges than this in one request is treated as abuse: the whole body goes instead.
MAX_RANGES = 16
_SPEC = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")
UNSATISFIABLE: list[ByteRange] = []


def requested(header: str, size: int) -> list[ByteRange] | None:
    """The ranges to send of a ``size``-byte body; [] when none can be satisfied."""
    unit, _, specs = header.partition("=")
    if unit.strip().lower() != "bytes" or not specs.strip():
        return None
    items = [item for item in specs.split(",") if item.strip()]
    if len(items) > MAX_RANGES:
        return None
    ranges: list[ByteRange] = []
    for item in items:
        parsed = _one(item, size)
        if parsed is None:
            return None  # invalid syntax: the whole header is ignored
        if parsed is not UNSATISFIABLE:
            ranges.append(parsed[0])
    return _merged(ranges)


def _one(item: str, size: int) -> list[ByteRange] | None:
    """One ``first-last``, ``first-`` or ``-suffix`` (RFC 9110 section 14.1.2)."""
    match = _SPEC.match(item)
    if match is None or match.group(0).strip() == "-":
        return None
    first, last = match.group(1), match.group(2)
    if not first:  # the last N bytes
        suffix = int(last)
        return [(max(0, size - suffix), size - 1)] if suffix and size else UNSATISFIABLE
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if last and int(last) < start:
        return None
    return [(start, end)] if start < size else UNSATISFIABLE


def _merged(ranges: list[ByteRange]) -> list[ByteRange]:
    """Overlapping or adjacent ranges as one, in order of position."""
    merged: list[ByteRange] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def content_range(byte_range: ByteRange, size: int) -> str:
    start, end = byte_range
    return f"bytes {start}-{end}/{size}"


def if_range_holds(if_range: str | None, etag: str) -> bool:
    """RFC 9110 section 13.1.5: the range applies only while the representation is the
    one the client has; that takes a strong match of an entity tag.  A date never
    matches here: hits carry no Last-Modified to compare it with."""
    if if_range is None:
        return True
    given = if_range.strip()
    return not given.startswith("W/") and not etag.startswith("W/") and given == etag
