"""Section 6: one large STOW-RS request, through the proxy and straight to Orthanc.

The body is a file written once (``bench.data.write_stow_body``) and streamed from
disk in both cases, so both sides read identical bytes at the same cost.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from bench.data import STOW_CONTENT_TYPE

CHUNK = 1024 * 1024


async def _file_body(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            yield chunk


async def post(url: str, path: Path) -> tuple[float, int]:
    """(seconds, HTTP status) of POSTing ``path`` to ``url``/studies."""
    headers = {
        "Content-Type": STOW_CONTENT_TYPE,
        "Content-Length": str(path.stat().st_size),
        "Accept": "application/dicom+json",
    }
    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
    began = time.perf_counter()
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(f"{url}/studies", data=_file_body(path), headers=headers) as response,
    ):
        await response.read()  # the STOW response: one item per instance
        return time.perf_counter() - began, response.status
