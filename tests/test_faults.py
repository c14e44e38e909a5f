"""Upstream and resource faults the chaos test found or the issue lists, one by one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from proxy.app import create_app
from tests.support import make_settings

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
METADATA = '[{"00080018": {"vr": "UI", "Value": ["1.2.3"]}}, {"00080018": {"vr": "UI"}}]'


class CloseDelimited:
    """An origin that answers JSON close-delimited (no length, not chunked), whole or cut."""

    def __init__(self) -> None:
        self.cut = True
        self.requests = 0

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/dicom-web"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        self.requests += 1
        body = METADATA.encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/dicom+json\r\n")
        writer.write(b"Connection: close\r\n\r\n" + (body[: len(body) // 2] if self.cut else body))
        await writer.drain()
        writer.close()


@pytest.fixture
async def origin() -> AsyncIterator[tuple[CloseDelimited, str]]:
    server = CloseDelimited()
    url = await server.start()
    yield server, url
    server.server.close()


@pytest.mark.parametrize("cached", [True, False])
async def test_cut_close_delimited_json_is_an_error_not_a_short_body(
    aiohttp_client: ClientFactory, tmp_path: Path, origin: tuple[CloseDelimited, str], cached: bool
) -> None:
    server, url = origin
    settings = make_settings(url, tmp_path / "data", no_cache=not cached)
    client = await aiohttp_client(create_app(settings))
    path = "/dicom-web/studies/1.2/series/1.3/instances/1.4/metadata"
    with pytest.raises(aiohttp.ClientPayloadError):
        async with client.get(path) as response:
            await response.read()
    server.cut = False
    async with client.get(path) as response:
        assert await response.text() == METADATA
    assert server.requests == 2


async def test_a_count_answer_without_the_count_is_an_upstream_fault_not_a_500(
    aiohttp_client: ClientFactory, aiohttp_server: Callable[..., Any], tmp_path: Path
) -> None:
    """Revalidation asks QIDO for NumberOfStudyRelatedInstances; an upstream that leaves
    it out (or answers garbage) makes the entry expired, and the proxy refetches."""
    answers = {"count": '[{"00201208": {"vr": "IS", "Value": [1]}}]'}
    hits = {"metadata": 0}

    async def metadata(request: web.Request) -> web.Response:
        hits["metadata"] += 1
        return web.Response(text=METADATA, content_type="application/dicom+json")

    async def qido(request: web.Request) -> web.Response:
        return web.Response(text=answers["count"], content_type="application/dicom+json")

    app = web.Application()
    app.router.add_get("/dicom-web/studies/1.2/metadata", metadata)
    app.router.add_get("/dicom-web/studies", qido)
    server = await aiohttp_server(app)
    settings = make_settings(
        str(server.make_url("/dicom-web")), tmp_path / "data", metadata_ttl=0.05
    )
    client = await aiohttp_client(create_app(settings))
    async with client.get("/dicom-web/studies/1.2/metadata") as response:
        assert response.status == 200 and response.headers["X-Cache"] == "MISS"
        await response.read()
    for broken in ("[{}]", '[{"00201208": {"vr": "IS"}}]', "[", '{"a": 1}'):
        answers["count"] = broken
        await asyncio.sleep(0.1)  # past --metadata-ttl: the next request revalidates
        async with client.get("/dicom-web/studies/1.2/metadata") as response:
            assert response.status == 200, broken
            assert await response.text() == METADATA
