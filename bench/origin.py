"""A synthetic DICOMweb origin for benchmarks: bodies of any size, generated on the fly.

``python -m bench.origin PORT``.  GET .../instances/{uid} answers a multipart/related
body of ``?bytes=N`` (default 512 KiB) made of 1 MiB parts; a STOW-RS POST reads every
part and answers that each instance was stored.  Nothing is held in memory beyond one
chunk (and the first bytes of a part).
"""

from __future__ import annotations

import io
import sys

import pydicom
from aiohttp import web

from proxy.dicomweb import multipart
from proxy.dicomweb.media import parse_media_type

BOUNDARY = "bench-boundary"
PART = 1024 * 1024
FILLER = bytes(range(256)) * (PART // 256)


async def retrieve(request: web.Request) -> web.StreamResponse:
    total = int(request.query.get("bytes", str(512 * 1024)))
    response = web.StreamResponse(
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
        }
    )
    await response.prepare(request)
    sent = 0
    while sent < total:
        size = min(PART, total - sent)
        head = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        await response.write(head + FILLER[:size] + b"\r\n")
        sent += size
    await response.write(f"--{BOUNDARY}--\r\n".encode())
    await response.write_eof()
    return response


async def store(request: web.Request) -> web.StreamResponse:
    """Reads every part (keeping only its first bytes) and answers a PS3.18 Table
    10.5.3-1 response that references each instance, like an archive that stored it."""
    media = parse_media_type(request.headers.get("Content-Type", ""))
    reader = multipart.MultipartReader(
        request.content.iter_chunked(1024 * 1024), multipart.boundary_of(media)
    )
    referenced, seen = [], 0
    while await reader.next_part() is not None:
        head = b""
        while chunk := await reader.read():
            seen += len(chunk)
            head = head if len(head) >= 16384 else head + chunk[:16384]
        dataset = pydicom.dcmread(io.BytesIO(head), stop_before_pixels=True, force=True)
        referenced.append(
            {
                "00081150": {"vr": "UI", "Value": [str(dataset.SOPClassUID)]},
                "00081155": {"vr": "UI", "Value": [str(dataset.SOPInstanceUID)]},
            }
        )
    body = {"00081199": {"vr": "SQ", "Value": referenced}, "bytes": seen}
    return web.json_response(body, content_type="application/dicom+json")


def main() -> None:
    app = web.Application(client_max_size=0)
    app.router.add_get("/dicom-web/studies/{study}/series/{series}/instances/{sop}", retrieve)
    app.router.add_get("/dicom-web/studies/{study}", retrieve)
    app.router.add_post("/dicom-web/studies", store)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()
