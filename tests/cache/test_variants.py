"""Hit variants made once: gzip for clients that accept it, rewritten per public base
(SPEC sections 2 and 3), against the stock Orthanc."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable

import aiohttp
from multidict import CIMultiDict

from harness.dicomgen import Study
from harness.orthanc import Orthanc
from proxy.state import CACHE
from tests.support import ProxyThread, eventually_async

CHROMIUM = "gzip, deflate, br, zstd"


async def get(
    url: str, accept_encoding: str | None, **headers: str
) -> tuple[int, CIMultiDict[str], bytes]:
    """A GET with exactly these headers; the body as it came over the wire."""
    if accept_encoding is not None:
        headers["Accept-Encoding"] = accept_encoding
    async with (
        aiohttp.ClientSession(auto_decompress=False, skip_auto_headers=("Accept-Encoding",)) as s,
        s.get(url, headers={"Accept": "application/dicom+json", **headers}) as response,
    ):
        return response.status, CIMultiDict(response.headers), await response.read()


async def settled(proxy: ProxyThread) -> None:
    """Until no fill and no background task (the variant made after a fill) is left."""
    cache = proxy.app[CACHE]  # type: ignore[index]
    await eventually_async(
        lambda: not cache._fills and not cache._tasks, timeout=5, message="fills did not finish"
    )


async def test_gzip_hits_come_from_one_variant_made_at_fill(
    orthanc: Orthanc, study: Study, start_proxy: Callable[..., ProxyThread]
) -> None:
    proxy = start_proxy(orthanc.dicomweb)
    url = f"{proxy.dicomweb}/studies/{study.uid}/metadata"
    cache = proxy.app[CACHE]  # type: ignore[index]
    status, miss_headers, miss_body = await get(url, CHROMIUM)
    assert (status, miss_headers["X-Cache"], miss_headers["Content-Encoding"]) == (
        200,
        "MISS",
        "gzip",
    )
    await settled(proxy)
    assert cache.hits.variants.made == 1  # the gzip variant for this public base, at fill
    bodies = set()
    for _ in range(5):
        status, headers, body = await get(url, CHROMIUM)
        assert (status, headers["X-Cache"], headers["Content-Encoding"]) == (200, "HIT", "gzip")
        assert "Accept-Encoding" in headers["Vary"]
        assert headers["ETag"].startswith('W/"')
        assert int(headers["Content-Length"]) == len(body)
        bodies.add(body)
    assert len(bodies) == 1 and cache.hits.variants.made == 1  # never compressed per hit
    plain = gzip.decompress(bodies.pop())
    assert plain == gzip.decompress(miss_body)
    assert f"127.0.0.1:{orthanc.port}".encode() not in plain and b"localhost" not in plain
    assert len(json.loads(plain)) == len(study.instances)


async def test_identity_and_gzip_variants_are_kept_apart(
    orthanc: Orthanc, study: Study, start_proxy: Callable[..., ProxyThread]
) -> None:
    proxy = start_proxy(orthanc.dicomweb)
    url = f"{proxy.dicomweb}/studies/{study.uid}/metadata"
    await get(url, None)
    await settled(proxy)
    _, zipped_headers, zipped = await get(url, "gzip, deflate")
    _, plain_headers, plain = await get(url, None)  # curl sends no Accept-Encoding
    _, refused_headers, refused = await get(url, "gzip;q=0, identity")
    assert zipped_headers["X-Cache"] == plain_headers["X-Cache"] == "HIT"
    assert "Content-Encoding" not in plain_headers and "Content-Encoding" not in refused_headers
    assert gzip.decompress(zipped) == plain == refused
    assert zipped_headers["ETag"] == "W/" + plain_headers["ETag"]
    # Weak comparison (RFC 9110 13.1.2): either validator revalidates either variant.
    for etag in (plain_headers["ETag"], zipped_headers["ETag"]):
        status, _, body = await get(url, CHROMIUM, **{"If-None-Match": etag})
        assert (status, body) == (304, b"")


async def test_one_variant_per_public_base(
    orthanc: Orthanc, study: Study, start_proxy: Callable[..., ProxyThread]
) -> None:
    proxy = start_proxy(orthanc.dicomweb)
    url = f"{proxy.dicomweb}/studies/{study.uid}/metadata"
    await get(url, CHROMIUM)
    await settled(proxy)
    for host in ("viewer.example.org", "edge.example.org"):
        _, headers, body = await get(url, CHROMIUM, Host=host)
        assert headers["X-Cache"] == "HIT"
        text = gzip.decompress(body).decode()
        assert f"http://{host}/dicom-web/studies/{study.uid}" in text
        other = {"viewer.example.org", "edge.example.org"} - {host}
        assert other.pop() not in text
    assert proxy.app[CACHE].hits.variants.made == 3  # type: ignore[index]
