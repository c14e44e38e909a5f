"""Range requests on cached entries (SPEC section 3), against the stock Orthanc behind the
fake upstream, which counts what reaches it: no cached byte goes to the upstream twice."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from harness.dicomgen import Study, make_study
from harness.orthanc import Orthanc
from proxy.app import create_app
from proxy.dicomweb.multipart import MultipartReader
from proxy.state import CACHE
from tests.fake_upstream import FakeUpstream
from tests.support import eventually_async, make_settings

# What dicomweb-client's retrieve_instance and cornerstone's frame loader send.
INSTANCE_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
FRAME_ACCEPT = "multipart/related; type=application/octet-stream; transfer-syntax=*"


Proxied = tuple[FakeUpstream, TestClient[Any, Any]]


@pytest.fixture
async def proxied(
    relay: FakeUpstream, aiohttp_client: Callable[..., Any], tmp_path: Path
) -> Proxied:
    """The proxy in front of the stock Orthanc, through the fake relaying to it."""
    settings = make_settings(relay.dicomweb, tmp_path / "data")
    return relay, await aiohttp_client(create_app(settings))


def instance_path(study: Study) -> str:
    series, sop, _ = study.instances[0]
    return f"/dicom-web/studies/{study.uid}/series/{series}/instances/{sop}"


async def settle(client: TestClient[Any, Any]) -> None:
    cache = client.server.app[CACHE]
    await eventually_async(lambda: not cache._fills, timeout=5, message="fills did not finish")


async def whole(client: TestClient[Any, Any], path: str, accept: str) -> bytes:
    response = await client.get(path, headers={"Accept": accept})
    assert response.status == 200
    body = await response.read()
    await settle(client)
    return body


async def test_ranges_of_a_cached_instance_never_reach_the_upstream(
    proxied: Proxied,
    study: Study,
) -> None:
    relay, client = proxied
    path = instance_path(study)
    body = await whole(client, path, INSTANCE_ACCEPT)
    size = len(body)
    cases = {
        "bytes=0-65535": (0, min(65535, size - 1)),
        "bytes=-100": (size - 100, size - 1),
        "bytes=1000-": (1000, size - 1),
    }
    for header, (first, last) in cases.items():
        response = await client.get(path, headers={"Accept": INSTANCE_ACCEPT, "Range": header})
        assert response.status == 206, header
        assert response.headers["X-Cache"] == "HIT"
        assert response.headers["Content-Range"] == f"bytes {first}-{last}/{size}"
        assert response.headers["Accept-Ranges"] == "bytes"
        assert await response.read() == body[first : last + 1]
    assert relay.count(path) == 1


async def test_several_ranges_come_as_multipart_byteranges(
    proxied: Proxied,
    study: Study,
) -> None:
    relay, client = proxied
    path = instance_path(study)
    body = await whole(client, path, INSTANCE_ACCEPT)
    headers = {"Accept": INSTANCE_ACCEPT, "Range": "bytes=0-99, 5000-5099, -10"}
    response = await client.get(path, headers=headers)
    assert response.status == 206
    content_type = response.headers["Content-Type"]
    assert content_type.startswith("multipart/byteranges; boundary=")
    raw = await response.read()
    assert int(response.headers["Content-Length"]) == len(raw)
    parts = await byteranges(raw, content_type.split("boundary=", 1)[1])
    size = len(body)
    assert parts == [
        (f"bytes 0-99/{size}", body[0:100]),
        (f"bytes 5000-5099/{size}", body[5000:5100]),
        (f"bytes {size - 10}-{size - 1}/{size}", body[-10:]),
    ]
    assert relay.count(path) == 1


async def byteranges(raw: bytes, boundary: str) -> list[tuple[str, bytes]]:
    """(Content-Range, bytes) of each part of a multipart/byteranges body."""

    async def once() -> AsyncIterator[bytes]:
        yield raw

    reader, parts = MultipartReader(once(), boundary), []
    while (headers := await reader.next_part()) is not None:
        data = b""
        while chunk := await reader.read():
            data += chunk
        parts.append((headers["content-range"], data))
    return parts


async def test_a_miss_with_range_fills_the_whole_entry_once(
    proxied: Proxied,
    study: Study,
) -> None:
    """A viewer streaming a frame asks for its first bytes first (cornerstone's
    progressive load): the whole frame is fetched once, the rest then comes from the cache."""
    relay, client = proxied
    path = instance_path(study) + "/frames/1"
    first = await client.get(path, headers={"Accept": FRAME_ACCEPT, "Range": "bytes=0-1023"})
    assert (first.status, first.headers["X-Cache"]) == (206, "MISS")
    head = await first.read()
    rest = await client.get(path, headers={"Accept": FRAME_ACCEPT, "Range": "bytes=1024-"})
    assert (rest.status, rest.headers["X-Cache"]) == (206, "HIT")
    whole_frame = await client.get(path, headers={"Accept": FRAME_ACCEPT})
    assert head + await rest.read() == await whole_frame.read()
    assert relay.count(path) == 1
    # Nothing of the client's Range went upstream: the relay saw a plain GET.
    assert all("Range" not in seen.headers for seen in relay.received if seen.path_qs == path)


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        ({"If-Range": '"not-this-one"'}, 200),   # another representation: the whole body
        ({"If-Range": "Tue, 01 Dec 2026 10:00:00 GMT"}, 200),
        ({}, 206),
    ],
)  # fmt: skip
async def test_if_range(
    proxied: Proxied,
    study: Study,
    extra: dict[str, str],
    status: int,
) -> None:
    relay, client = proxied
    path = instance_path(study)
    body = await whole(client, path, INSTANCE_ACCEPT)
    etag = (await client.get(path, headers={"Accept": INSTANCE_ACCEPT})).headers["ETag"]
    matching = await client.get(
        path, headers={"Accept": INSTANCE_ACCEPT, "Range": "bytes=0-9", "If-Range": etag}
    )
    assert (matching.status, await matching.read()) == (206, body[:10])
    response = await client.get(
        path, headers={"Accept": INSTANCE_ACCEPT, "Range": "bytes=0-9", **extra}
    )
    assert response.status == status
    assert await response.read() == (body[:10] if status == 206 else body)
    assert relay.count(path) == 1


async def test_an_unsatisfiable_range_is_416_with_the_size(
    proxied: Proxied,
    study: Study,
) -> None:
    relay, client = proxied
    path = instance_path(study)
    size = len(await whole(client, path, INSTANCE_ACCEPT))
    response = await client.get(
        path, headers={"Accept": INSTANCE_ACCEPT, "Range": f"bytes={size}-"}
    )
    assert response.status == 416
    assert response.headers["Content-Range"] == f"bytes */{size}"
    assert response.headers["Content-Type"] == "application/problem+json"
    assert (await response.json())["status"] == 416
    ignored = await client.get(path, headers={"Accept": INSTANCE_ACCEPT, "Range": "bytes=9-0"})
    assert ignored.status == 200  # invalid syntax: the header is ignored (RFC 9110 14.2)
    assert relay.count(path) == 1


async def test_ranges_of_rewritten_bodies_are_cut_from_the_identity_variant(
    proxied: Proxied,
    study: Study,
) -> None:
    """Metadata is rewritten per public base: a range is of the bytes sent, not stored.
    A gzip variant ignores Range and goes whole (RFC 9110 section 14.2)."""
    relay, client = proxied
    path = f"/dicom-web/studies/{study.uid}/metadata"
    plain = {"Accept": "application/dicom+json", "Accept-Encoding": "identity"}
    body = await whole(client, path, "application/dicom+json")
    ranged = await client.get(path, headers={**plain, "Range": "bytes=10-19"})
    assert (ranged.status, ranged.headers["X-Cache"]) == (206, "HIT")
    assert ranged.headers["Accept-Ranges"] == "bytes"
    assert ranged.headers["Content-Range"] == f"bytes 10-19/{len(body)}"
    assert await ranged.read() == body[10:20]
    zipped_headers = {**plain, "Accept-Encoding": "gzip", "Range": "bytes=0-9"}
    zipped = await client.get(path, headers=zipped_headers)
    assert (zipped.status, zipped.headers["Content-Encoding"]) == (200, "gzip")
    assert "Accept-Ranges" not in zipped.headers
    assert await zipped.read() == body  # decoded by the test client
    assert relay.count(path) == 1


async def test_ranges_of_a_512_kib_instance(proxied: Proxied, orthanc: Orthanc) -> None:
    """sendfile from an offset, and several ranges each larger than one read."""
    big = make_study(1, 1, rows=512, columns=512)
    orthanc.upload(big.instances[0][2])
    relay, client = proxied
    path = instance_path(big)
    body = await whole(client, path, INSTANCE_ACCEPT)
    single = await client.get(path, headers={"Accept": INSTANCE_ACCEPT, "Range": "bytes=100000-"})
    assert (single.status, await single.read()) == (206, body[100000:])
    several = "bytes=0-299999,400000-"
    response = await client.get(path, headers={"Accept": INSTANCE_ACCEPT, "Range": several})
    boundary = response.headers["Content-Type"].split("boundary=", 1)[1]
    parts = await byteranges(await response.read(), boundary)
    assert [data for _, data in parts] == [body[:300000], body[400000:]]
    assert relay.count(path) == 1
