"""Does a response's Content-Type answer the request? (proxy.dicomweb.media, SPEC section 3)"""

from __future__ import annotations

import pytest

from proxy.dicomweb.media import answers, default_answers
from proxy.dicomweb.uri import classify

INSTANCE = "studies/1.2/series/1.3/instances/1.4"
FRAMES = f"{INSTANCE}/frames/1"
RENDERED = f"{INSTANCE}/rendered"
METADATA = "studies/1.2/metadata"
QIDO = "studies"

DICOM_PARTS = 'multipart/related; type="application/dicom"'
ORTHANC_DICOM = (
    'multipart/related; type="application/dicom"; boundary=7d59aa53a1f1c1c2ab9ddd2ab1ec1d8b1b9e4fd2'
)
ORTHANC_FRAMES = 'multipart/related; type="application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"; boundary=x'
FRAMES_ACCEPT = "multipart/related; type=application/octet-stream; transfer-syntax=*"


@pytest.mark.parametrize(
    ("path", "accept", "content_type", "expected"),
    [(INSTANCE, DICOM_PARTS, ORTHANC_DICOM, True),
     (INSTANCE, DICOM_PARTS, "text/html; charset=utf-8", False),
     (INSTANCE, DICOM_PARTS, "text/plain", False),
     (INSTANCE, DICOM_PARTS, "application/dicom+json", False),
     (INSTANCE, DICOM_PARTS, 'multipart/related; type="application/octet-stream"; boundary=x', False),
     (INSTANCE, DICOM_PARTS, "multipart/related; boundary=x", True),
     (INSTANCE, DICOM_PARTS, 'Multipart/Related; Type="Application/DICOM"; boundary=x', True),
     (INSTANCE, DICOM_PARTS, "", False),
     (INSTANCE, None, 'multipart/related; type="application/dicom"; boundary=x', True),
     (INSTANCE, None, "application/dicom", True),
     (INSTANCE, None, "text/html", False),
     (INSTANCE, None, "text/plain; charset=utf-8", False),
     (INSTANCE, "", "multipart/related; boundary=x", True),
     (INSTANCE, "", "text/html", False),
     (INSTANCE, "*/*", 'multipart/related; type="application/dicom"; boundary=x', True),
     (INSTANCE, "*/*", "application/dicom", True),
     (INSTANCE, "*/*", "text/html", False),
     (INSTANCE, "*/*", "", False),
     (FRAMES, FRAMES_ACCEPT, ORTHANC_FRAMES, True),
     (FRAMES, FRAMES_ACCEPT, "multipart/related; type=application/octet-stream; boundary=x", True),
     (FRAMES, FRAMES_ACCEPT, ORTHANC_DICOM, False),
     (FRAMES, FRAMES_ACCEPT, "text/html", False),
     (FRAMES, None, ORTHANC_FRAMES, True),
     # dicomweb-client's retrieve_instance_frames: any part type, but still multipart.
     (FRAMES, 'multipart/related; type="*/*"', ORTHANC_FRAMES, True),
     (FRAMES, 'multipart/related; type="*/*"', "text/html", False),
     (FRAMES, 'multipart/related; type="image/*"', 'multipart/related; type="image/jpeg"; boundary=x', True),
     (FRAMES, 'multipart/related; type="image/*"', ORTHANC_FRAMES, False),
     (METADATA, "application/dicom+json", "application/dicom+json", True),
     (METADATA, "application/dicom+json", "application/json", True),
     (METADATA, "application/json", "application/dicom+json", True),
     (METADATA, "application/dicom+json", "text/html", False),
     (METADATA, None, "application/dicom+json", True),
     (METADATA, None, "application/json; charset=utf-8", True),
     (METADATA, None, "text/plain", False),
     (METADATA, None, "text/html", False),
     (QIDO, "application/dicom+json", "application/dicom+json; charset=utf-8", True),
     (QIDO, "application/dicom+json", "text/html", False),
     (QIDO, None, "application/dicom+json", True),
     (QIDO, None, "text/html; charset=utf-8", False),
     (RENDERED, "image/jpeg", "image/jpeg", True),
     (RENDERED, "image/jpeg", "text/html", False),
     (RENDERED, "image/*", "image/png", True),
     (RENDERED, "image/*", "text/html", False),
     (RENDERED, None, "image/jpeg", True),
     (RENDERED, None, "text/html", False),
     (RENDERED, "*/*", "image/gif", True),
     (RENDERED, "text/html", "text/html", True),
     (RENDERED, "text/html", "text/html; charset=utf-8", True),
     (INSTANCE, f"text/html;q=0, {DICOM_PARTS}", "text/html", False),
     (INSTANCE, f"text/html;q=0, {DICOM_PARTS}", ORTHANC_DICOM, True),
     (INSTANCE, f"text/html; q=0.0, {DICOM_PARTS}", "text/html", False),
     (INSTANCE, f"text/html;q=0.000, {DICOM_PARTS}", "text/html", False),
     (RENDERED, "text/html;q=0, image/png", "text/html", False),
     (RENDERED, "text/html;q=0.5, image/png", "text/html", True)],
)  # fmt: skip
def test_answers(path: str, accept: str | None, content_type: str, expected: bool) -> None:
    defaults = classify(path).default_answers
    assert answers(content_type, accept, defaults) is expected


@pytest.mark.parametrize(
    ("path", "method", "textual"),
    [(QIDO, "GET", True),
     ("series", "GET", True),
     ("studies/1.2/series", "GET", True),
     ("studies/1.2/series/1.3/instances", "GET", True),
     (METADATA, "GET", True),
     (f"{INSTANCE}/metadata", "GET", True),
     ("studies", "POST", True),
     ("studies/1.2", "POST", True),
     ("studies/1.2", "GET", False),
     (INSTANCE, "GET", False),
     (FRAMES, "GET", False),
     (f"{INSTANCE}/bulk/7FE00010", "GET", False),
     (RENDERED, "GET", False),
     ("studies/1.2/series/1.3/thumbnail", "GET", False)],
)  # fmt: skip
def test_answers_in_text(path: str, method: str, textual: bool) -> None:
    assert classify(path, method).answers_in_text is textual


@pytest.mark.parametrize(
    ("path", "text", "rendered"),
    [(QIDO, True, False),
     (METADATA, True, False),
     (INSTANCE, False, False),
     (FRAMES, False, False),
     (RENDERED, False, True)],
)  # fmt: skip
def test_default_answers_follow_the_resource(path: str, text: bool, rendered: bool) -> None:
    assert classify(path).default_answers == default_answers(text=text, rendered=rendered)


@pytest.mark.parametrize(
    ("text", "rendered", "member", "expected"),
    [(True, False, "application/dicom+json", True),
     (True, False, "multipart/related", True),
     (True, False, "text/html", False),
     (False, False, "application/dicom", True),
     (False, False, "text/html", False),
     (False, True, "image/*", True),
     (False, True, "text/html", False),
     (True, True, "application/dicom+json", False)],
)  # fmt: skip
def test_default_answers(text: bool, rendered: bool, member: str, expected: bool) -> None:
    assert (member in default_answers(text=text, rendered=rendered)) is expected
