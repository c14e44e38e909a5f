"""Accept / Content-Type parsing and normalisation (PS3.18 section 8.7).

Pure: no server imports.
"""

from __future__ import annotations

import functools

# Parameters of a media range that select a different representation (PS3.18 8.7.3).
_REPRESENTATION_PARAMS = ("type", "transfer-syntax", "charset")


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """``multipart/related; type="application/dicom"`` -> (main type, parameters).

    Parameter names are lower-cased and quotes removed; values keep their case except
    ``type`` which is a media type and so case-insensitive.
    """
    main, *params = _split_outside_quotes(value, ";")
    parsed: dict[str, str] = {}
    for param in params:
        name, sep, raw = param.partition("=")
        if not sep:
            continue
        name = name.strip().lower()
        text = raw.strip()
        if len(text) >= 2 and text[0] == text[-1] == '"':
            text = text[1:-1]
        parsed[name] = text.lower() if name == "type" else text
    return main.strip().lower(), parsed


@functools.lru_cache(maxsize=256)
def normalize_accept(value: str | None) -> str:
    """A canonical Accept for cache keys: media ranges sorted, only representation params.

    ``q`` values are dropped: the upstream decides what to send, and the key only has to
    tell different requests apart, not rank them.  Remembered: clients send few distinct
    Accept values, and every cacheable request needs its key.
    """
    if not value:
        return "*/*"
    ranges = []
    for item in _split_outside_quotes(value, ","):
        main, params = parse_media_type(item)
        if not main:  # "a/b,;q=1": an empty range would make a different key
            continue
        kept = [f"{name}={params[name]}" for name in _REPRESENTATION_PARAMS if name in params]
        ranges.append(";".join([main, *kept]))
    return ",".join(sorted(set(ranges))) or "*/*"


def _split_outside_quotes(value: str, separator: str) -> list[str]:
    if '"' not in value:
        return value.split(separator)
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in value:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts
