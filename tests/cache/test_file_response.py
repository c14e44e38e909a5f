"""Stored bodies on the wire: head with MSG_MORE, body with sendfile (proxy.cache.file_response,
through proxy.internals)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from proxy import internals
from proxy.app import create_app
from tests.cache.test_cache import INSTANCE, WHOLE, settle
from tests.fake_upstream import FakeUpstream
from tests.support import make_settings

ACCEPT = 'multipart/related; type="application/dicom"'


@pytest.fixture
def heads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Lengths of the heads sent with MSG_MORE (the real call is still made)."""
    sent: list[int] = []
    real = internals.send_more

    def spy(sock: Any, data: bytes) -> int:
        sent.append(len(data))
        return real(sock, data)

    monkeypatch.setattr(internals, "send_more", spy)
    return sent


async def exchange(port: int, requests: list[str]) -> bytes:
    """Send ``requests`` on one keep-alive connection; everything it answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for method in requests:
        writer.write(
            f"{method} {INSTANCE} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: {ACCEPT}\r\n\r\n".encode()
        )
    writer.write(f"GET {INSTANCE} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(-1), 30)
    writer.close()
    return answer


def responses(answer: bytes, methods: list[str]) -> list[tuple[bytes, dict[str, str], bytes]]:
    """Split ``answer`` into (status line, headers, body) per request, by Content-Length."""
    found = []
    for method in methods:
        head, _, answer = answer.partition(b"\r\n\r\n")
        status, *lines = head.split(b"\r\n")
        pairs = (line.decode().split(": ", 1) for line in lines)
        headers = {name.lower(): value for name, value in pairs}
        length = 0 if method == "HEAD" else int(headers["content-length"])
        found.append((status, headers, answer[:length]))
        answer = answer[length:]
    return found


async def warm_proxy(aiohttp_client: Callable[..., Any], fake: FakeUpstream, tmp_path: Path) -> int:
    fake.route("GET", INSTANCE, WHOLE)
    client = await aiohttp_client(create_app(make_settings(fake.dicomweb, tmp_path / "data")))
    await (await client.get(INSTANCE, headers={"Accept": ACCEPT})).read()
    await settle(client)
    port: int = client.server.port
    return port


async def test_hits_on_one_connection_are_framed_exactly(
    aiohttp_client: Callable[..., Any], fake: FakeUpstream, tmp_path: Path, heads: list[int]
) -> None:
    port = await warm_proxy(aiohttp_client, fake, tmp_path)
    methods = ["GET", "HEAD", "GET", "GET"]
    answer = await exchange(port, methods)
    found = responses(answer, methods)
    for (status, headers, body), method in zip(found, methods, strict=True):
        assert status == b"HTTP/1.1 200 OK"
        assert headers["x-cache"] == "HIT"
        assert int(headers["content-length"]) == len(WHOLE.data)
        assert body == (b"" if method == "HEAD" else WHOLE.data)
    # Each GET's head went out with MSG_MORE; HEAD's went out as aiohttp sends it.
    assert len(heads) == 3 and all(length > 100 for length in heads)


async def test_a_head_the_socket_took_in_part_is_finished_in_order(
    aiohttp_client: Callable[..., Any],
    fake: FakeUpstream,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = internals.send_more
    monkeypatch.setattr(internals, "send_more", lambda sock, data: real(sock, data[:7]))
    port = await warm_proxy(aiohttp_client, fake, tmp_path)
    [(status, headers, body), _] = responses(await exchange(port, ["GET"]), ["GET", "GET"])
    assert status == b"HTTP/1.1 200 OK" and headers["x-cache"] == "HIT"
    assert body == WHOLE.data


class FakeTransport:
    def __init__(self, buffered: int = 0, tls: bool = False) -> None:
        self.buffered, self.tls = buffered, tls

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def get_extra_info(self, name: str) -> object:
        return {"socket": "the socket", "sslcontext": object() if self.tls else None}[name]


@pytest.mark.parametrize(
    ("transport", "direct"),
    [
        (FakeTransport(), True),
        (FakeTransport(buffered=10), False),
        (FakeTransport(tls=True), False),
    ],
)
def test_direct_writes_only_on_an_idle_plain_socket(transport: FakeTransport, direct: bool) -> None:
    """Bytes written past the transport would overtake what it holds, or skip TLS."""
    assert (internals.socket_if_idle(transport) is not None) is direct  # type: ignore[arg-type]
