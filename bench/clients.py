"""The request headers real clients send, for every benchmark request (SPEC section 8).

Read off the clients themselves: Chromium 156 sends ``Accept-Encoding: gzip, deflate,
br, zstd`` on every fetch, and OHIF asks study metadata as ``application/dicom+json``;
dicomweb-client 0.61 (requests 2.34) asks instances as ``multipart/related;
type="application/dicom"; transfer-syntax=*`` with ``Accept-Encoding: gzip, deflate``
(requests adds ``br, zstd`` when their libraries are installed: the proxy treats both
the same).  wrk sends no ``Accept-Encoding`` of its own, so without these every server
would be measured answering a client nobody runs.
"""

from __future__ import annotations

CHROMIUM_ENCODING = "gzip, deflate, br, zstd"
REQUESTS_ENCODING = "gzip, deflate"

OHIF_METADATA = {"Accept": "application/dicom+json", "Accept-Encoding": CHROMIUM_ENCODING}
OHIF_FRAMES = {
    "Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*",
    "Accept-Encoding": CHROMIUM_ENCODING,
}
DICOMWEB_CLIENT_INSTANCE = {
    "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*',
    "Accept-Encoding": REQUESTS_ENCODING,
}
