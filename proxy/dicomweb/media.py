"""Accept / Content-Type parsing and normalisation (PS3.18 section 8.7).

Pure: no server imports.
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple

# Parameters of a media range that select a different representation (PS3.18 8.7.3).
_REPRESENTATION_PARAMS = ("type", "transfer-syntax", "charset")
# RFC 9110 section 5.6.6 parameters: token = token / quoted-string.
_PARAM = re.compile(
    r';\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)', re.DOTALL
)
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)


class MediaType(NamedTuple):
    """A parsed ``Content-Type`` or media range (RFC 9110 section 8.3.1): the main type
    lower-cased, parameter names lower-cased, values unquoted.  A tuple, so
    ``main, params = parse_media_type(value)`` reads as well as ``.main``."""

    main: str
    params: dict[str, str]


def parse_media_type(value: str) -> MediaType:
    """``multipart/related; type="application/dicom"`` -> (main type, parameters).

    Parameters follow RFC 9110 section 5.6.6 (a quoted-string may hold ``;`` and
    quoted pairs); values keep their case except ``type``, which is a media type and so
    case-insensitive (RFC 2387 section 3.1).  A parameter that is not ``name=value``
    is left out; nothing raises.  Remembered (a response's type is asked for at several
    steps); each caller gets its own ``params``."""
    main, params = _parsed(value)
    return MediaType(main, dict(params))


@functools.lru_cache(maxsize=1024)
def _parsed(value: str) -> tuple[str, dict[str, str]]:
    main, _, rest = value.partition(";")
    params: dict[str, str] = {}
    for match in _PARAM.finditer(";" + rest):
        name, raw = match.group(1).lower(), match.group(2)
        if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
            raw = _QUOTED_PAIR.sub(r"\1", raw[1:-1])
        params[name] = raw.lower() if name == "type" else raw
    return main.strip().lower(), params


def parse_accept(value: str | None) -> list[MediaType]:
    """The media ranges of an ``Accept`` (RFC 9110 section 12.5.1), or any list of the
    same shape (``Accept-Encoding``: codings with a weight), in order; empty items are
    left out."""
    ranges = [parse_media_type(item) for item in _split_outside_quotes(value or "", ",")]
    return [media for media in ranges if media.main]


def quality(media: MediaType) -> float:
    """RFC 9110 section 12.4.2: ``q`` from 0 to 1, 1 when absent; unreadable counts as 0."""
    try:
        return float(media.params.get("q", "1"))
    except ValueError:
        return 0.0


def multipart_boundary(content_type: str) -> str | None:
    """The ``boundary`` of a ``multipart/*`` media type; None for any other."""
    media = parse_media_type(content_type)
    if not media.main.startswith("multipart/"):
        return None
    return media.params.get("boundary") or None


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
    # "a/b,;q=1": parse_accept leaves the empty range out, which would make another key.
    for main, params in parse_accept(value):
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


# What a request that accepts anything (no Accept, or only */*) may be answered with, per
# kind of resource (PS3.18 sections 8.7.3 and 8.7.4).  A gateway's HTML login page or
# text/plain error is none of these: a rendered SR asked for as text/html says so in
# its Accept.
_TEXT_ANSWERS = (
    "application/dicom+json",
    "application/json",
    "application/dicom+xml",
    "multipart/related",
    "application/xml",
    "text/xml",
    "application/vnd.sun.wadl+xml",
)
_BULK_ANSWERS = (
    "multipart/related",
    "application/dicom",
    "application/octet-stream",
    "application/zip",
    "image/*",
    "video/*",
)
_RENDERED_ANSWERS = ("image/*", "video/*", "application/pdf")
# DICOM JSON is sent as either name by real servers (PS3.18 8.7.3.5).
_SAME = {"application/json": "application/dicom+json"}


def default_answers(*, text: bool, rendered: bool) -> tuple[str, ...]:
    if rendered:
        return _RENDERED_ANSWERS
    return _TEXT_ANSWERS if text else _BULK_ANSWERS


def answers(content_type: str, accept: str | None, defaults: tuple[str, ...]) -> bool:
    """Whether a response of ``content_type`` is a representation the request asked
    for: it matches one of the ``accept`` media ranges (``type=`` of a multipart range
    included), or one of ``defaults`` where the request accepts anything."""
    main, params = parse_media_type(content_type)
    if not main:
        return False
    ranges = [media for media in parse_accept(accept) if quality(media) > 0]
    if not ranges or any(m == "*/*" for m, _ in ranges):
        ranges += [MediaType(d, {}) for d in defaults]
    return any(_matches(main, params, m, p) for m, p in ranges if m != "*/*")


def _matches(main: str, params: dict[str, str], wanted: str, wanted_params: dict[str, str]) -> bool:
    if wanted.endswith("/*"):
        return main.startswith(wanted[:-1])
    if _SAME.get(main, main) != _SAME.get(wanted, wanted):
        return False
    wanted_part, given = _part_type(wanted_params), _part_type(params)
    # A multipart range that names its part type is answered only by parts of that
    # type (dicomweb-client asks frames with type="*/*"); a response that does not say
    # is judged by its main type alone.
    if wanted_part is None or given is None or wanted_part == "*/*":
        return True
    if wanted_part.endswith("/*"):
        return given.startswith(wanted_part[:-1])
    return given == wanted_part


def _part_type(params: dict[str, str]) -> str | None:
    """The ``type`` of a multipart media type, as a bare media type: Orthanc writes
    ``type="application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"``."""
    value = params.get("type")
    if value is None:
        return None
    main = parse_media_type(value).main
    return _SAME.get(main, main)
