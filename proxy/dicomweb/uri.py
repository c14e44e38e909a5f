"""Classify a DICOMweb request path into a :class:`Resource`.

Pure: no server imports.  The path is relative to the DICOMweb base, as in PS3.18
section 10.4 (WADO-RS), 10.5 (STOW-RS) and 10.6 (QIDO-RS) resource tables, e.g.
``studies/1.2/series/1.3/instances/1.4/frames/1,2``.
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass
from urllib.parse import unquote

from proxy.dicomweb.media import default_answers

# PS3.5 section 9.1: digits and dots, no leading zero per component, at most 64 chars.
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_RENDERED = frozenset({"rendered", "thumbnail"})
# C0 controls and DEL, literal or percent-encoded: no DICOMweb path needs them, and a
# CR/LF or NUL that an upstream decodes could split a header line or end a string.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]|%(?:[01][0-9a-fA-F]|7[fF])")
# What an upstream that decodes twice, or leniently, reads as a dot or a slash: double
# percent-encoding (%252e), and overlong UTF-8 (%c0%ae, %e0%80%ae), never valid UTF-8.
_DISGUISED = re.compile(r"%25(?:2e|2f|5c|00)|%c[01]|%e0%[89]|%f0%8", re.IGNORECASE)


class InvalidPath(ValueError):
    """The path climbs out of the base or carries a malformed UID."""


class Transaction(enum.Enum):
    """The metric label of SPEC section 6."""

    QIDO = "qido"
    WADO = "wado"
    WADO_METADATA = "wado_metadata"
    WADO_RENDERED = "wado_rendered"
    STOW = "stow"
    OTHER = "other"


class Level(enum.Enum):
    NONE = "none"
    STUDY = "study"
    SERIES = "series"
    INSTANCE = "instance"


@dataclass(frozen=True)
class Resource:
    transaction: Transaction
    level: Level
    study: str | None = None
    series: str | None = None
    instance: str | None = None
    suffix: str = ""

    @property
    def is_instance_addressed(self) -> bool:
        """Anything below a SOP Instance UID is immutable (SPEC section 3)."""
        return self.instance is not None

    @property
    def is_rendered(self) -> bool:
        return self.transaction is Transaction.WADO_RENDERED

    @property
    def answers_in_text(self) -> bool:
        """JSON or XML answers: QIDO-RS results, metadata, STOW-RS responses, WADL.
        Retrieves, frames, bulk data and rendered images are bulk data."""
        return self.transaction not in {Transaction.WADO, Transaction.WADO_RENDERED}

    @property
    def default_answers(self) -> tuple[str, ...]:
        """Media types that answer a request for this resource that accepts anything."""
        return default_answers(text=self.answers_in_text, rendered=self.is_rendered)


def is_valid_uid(text: str) -> bool:
    return len(text) <= 64 and _UID.match(text) is not None


@functools.lru_cache(maxsize=8192)
def check_path(raw_path: str) -> None:
    """Refuse any path that could climb out of the base (SPEC section 2).

    ``..`` and ``.`` segments, encoded or not, with path parameters or not, encoded
    slashes or backslashes, double or overlong encodings of them, and control characters
    (CR, LF, NUL, ...) are refused before anything is forwarded.
    """
    lowered = raw_path.lower()
    if "%2f" in lowered or "%5c" in lowered or "\\" in raw_path:
        raise InvalidPath("encoded slash or backslash in the path")
    if _CONTROL.search(raw_path):
        raise InvalidPath("control character in the path")
    if _DISGUISED.search(raw_path):
        raise InvalidPath("double-encoded or overlong-encoded character in the path")
    for segment in raw_path.split("/"):
        # RFC 3986 3.3: ";" starts path parameters, which servlet containers (Tomcat,
        # Undertow: dcm4chee) strip before resolving dot segments, so "..;x" is "..".
        if unquote(segment).split(";", 1)[0] in {".", ".."}:
            raise InvalidPath("dot segments are not allowed in the path")


@functools.lru_cache(maxsize=8192)
def classify(relative_path: str, method: str = "GET") -> Resource:
    """Parse a path below the DICOMweb base.  Raises InvalidPath for malformed UIDs."""
    segments = [segment for segment in relative_path.split("/") if segment]
    if method == "POST" and _is_stow_target(segments):
        study = _uid(segments[1]) if len(segments) == 2 else None
        level = Level.STUDY if study else Level.NONE
        return Resource(Transaction.STOW, level, study=study)
    if not segments or segments[0] not in {"studies", "series", "instances"}:
        return Resource(Transaction.OTHER, Level.NONE, suffix="/".join(segments))
    if segments[0] != "studies":
        return _query(segments, None, None)
    return _study(segments[1:])


def _is_stow_target(segments: list[str]) -> bool:
    return bool(segments) and segments[0] == "studies" and len(segments) <= 2


def _uid(text: str) -> str:
    if not is_valid_uid(text):
        raise InvalidPath("malformed UID in the path")
    return text


def _query(segments: list[str], study: str | None, series: str | None) -> Resource:
    if len(segments) != 1:
        raise InvalidPath("unknown QIDO-RS resource")
    return Resource(Transaction.QIDO, Level.NONE, study=study, series=series)


def _study(rest: list[str]) -> Resource:
    if not rest:
        return Resource(Transaction.QIDO, Level.NONE)
    study = _uid(rest[0])
    if len(rest) == 1:
        return Resource(Transaction.WADO, Level.STUDY, study=study)
    if rest[1] in {"series", "instances"} and len(rest) == 2:
        return _query(rest[1:], study, None)
    if rest[1] == "series":
        return _series(study, rest[2:])
    return _leaf(Level.STUDY, rest[1:], study=study)


def _series(study: str, rest: list[str]) -> Resource:
    series = _uid(rest[0])
    if len(rest) == 1:
        return Resource(Transaction.WADO, Level.SERIES, study=study, series=series)
    if rest[1] == "instances" and len(rest) == 2:
        return _query(rest[1:], study, series)
    if rest[1] == "instances":
        instance = _uid(rest[2])
        if len(rest) == 3:
            return Resource(
                Transaction.WADO, Level.INSTANCE, study=study, series=series, instance=instance
            )
        return _leaf(Level.INSTANCE, rest[3:], study=study, series=series, instance=instance)
    return _leaf(Level.SERIES, rest[1:], study=study, series=series)


def _leaf(
    level: Level,
    suffix: list[str],
    *,
    study: str,
    series: str | None = None,
    instance: str | None = None,
) -> Resource:
    """metadata, rendered, thumbnail, frames/..., bulkdata/..., pixeldata below a level."""
    transaction = Transaction.WADO
    if suffix[0] == "metadata":
        transaction = Transaction.WADO_METADATA
    elif suffix[0] in _RENDERED or suffix[-1] in _RENDERED:
        transaction = Transaction.WADO_RENDERED
    return Resource(
        transaction,
        level,
        study=study,
        series=series,
        instance=instance,
        suffix="/".join(suffix),
    )
