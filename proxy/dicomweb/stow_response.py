"""The STOW-RS response: its items, reason codes, and the merge of several batches.

PS3.18 section 10.5.3 and Table 10.5.3-1 (Store Instances Response Module, detailed in
Annex I): a response carries RetrieveURL (0008,1190), ReferencedSOPSequence (0008,1199)
for stored instances (each with ReferencedSOPClassUID (0008,1150),
ReferencedSOPInstanceUID (0008,1155), RetrieveURL and an optional WarningReason
(0008,1196)) and FailedSOPSequence (0008,1198) for the others (with FailureReason
(0008,1197)).  The HTTP status is 200 when all were stored without warnings, 202 when
some were stored and some failed or carry warnings, 409 when none was stored.

The DICOM JSON and Native DICOM XML encodings are in
:mod:`proxy.dicomweb.stow_encoding`.  Pure: no server imports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# PS3.7 Annex C status codes used by PS3.18 Annex I.
PROCESSING_FAILURE = 0x0110
REFUSED_NOT_AUTHORIZED = 0x0124
SOP_CLASS_NOT_SUPPORTED = 0x0122
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000


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
