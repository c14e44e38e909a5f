"""A synthetic DICOMweb origin for benchmarks: bodies of any size, generated on the fly.

``python -m bench.origin PORT``.  GET .../instances/{uid} answers a multipart/related
body of ``?bytes=N`` (default 512 KiB) made of 1 MiB parts; POST consumes the body and
answers how many bytes it read.  Nothing is held in memory beyond one chunk.
"""

from __future__ import annotations

import sys

from aiohttp import web

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
    seen = 0
    async for chunk in request.content.iter_chunked(1024 * 1024):
        seen += len(chunk)
    return web.json_response({"bytes": seen})


def main() -> None:
    app = web.Application(client_max_size=0)
    app.router.add_get("/dicom-web/studies/{study}/series/{series}/instances/{sop}", retrieve)
    app.router.add_get("/dicom-web/studies/{study}", retrieve)
    app.router.add_post("/dicom-web/studies", store)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()
