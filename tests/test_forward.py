"""Pass-through behaviour: faults, error documents, headers, traversal, URL rewriting."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from harness.dicomgen import Study
from harness.net import free_port
from harness.orthanc import Orthanc
from tests.fake_upstream import Answer, FakeUpstream

INSTANCE = "/dicom-web/studies/1.2.3/series/4.5/instances/6.7"
ARCHIVE = "http://archive.internal:8042/dicom-web"  # the name an archive gives itself


async def problem(response: aiohttp.ClientResponse) -> dict[str, Any]:
    assert response.headers["Content-Type"].startswith("application/problem+json")
    document: dict[str, Any] = json.loads(await response.read())
    assert document["status"] == response.status
    assert document["requestId"] == response.headers["X-Request-ID"]
    return document


async def test_refused_connection_is_502(proxy_to: Callable[..., Any]) -> None:
    client = await proxy_to(f"http://127.0.0.1:{free_port()}/dicom-web")
    response = await client.get("/dicom-web/studies")
    assert response.status == 502
    assert (await problem(response))["title"] == "Upstream unreachable"


async def test_stall_past_timeout_is_504(proxy_to: Callable[..., Any], fake: FakeUpstream) -> None:
    fake.route("GET", "/dicom-web/studies/9.1/stall", Answer(body="late", delay=3))
    client = await proxy_to(fake.dicomweb, upstream_timeout=0.3)
    response = await client.get("/dicom-web/studies/9.1/stall")
    assert response.status == 504
    assert "in time" in (await problem(response))["detail"]


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_dropped_body_is_an_error_not_a_short_body(
    proxy_to: Callable[..., Any], fake: FakeUpstream, framing: Any
) -> None:
    dropped = Answer(
        body=b"x" * 100_000,
        headers={"Content-Type": "application/dicom"},
        framing=framing,
        drop_after=50_000,
    )
    fake.route("GET", f"{INSTANCE}/drop", dropped)
    client = await proxy_to(fake.dicomweb)
    response = await client.get(f"{INSTANCE}/drop")
    assert response.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()


async def test_upstream_errors_pass_through_unchanged(
    proxy_to: Callable[..., Any], fake: FakeUpstream
) -> None:
    busy = Answer(503, "archive busy", {"Retry-After": "7", "Content-Type": "text/plain"})
    fake.route("GET", "/dicom-web/studies/503", busy)
    client = await proxy_to(fake.dicomweb)
    response = await client.get("/dicom-web/studies/503")
    assert response.status == 503
    assert await response.text() == "archive busy"
    assert response.headers["Retry-After"] == "7"


async def test_request_headers_towards_the_upstream(
    proxy_to: Callable[..., Any], fake: FakeUpstream
) -> None:
    client = await proxy_to(fake.dicomweb)
    response = await client.get(
        "/dicom-web/echo",
        headers={
            "Authorization": "Bearer client-secret",
            "Cookie": "session=abc",
            "X-Forwarded-Host": "evil.example",
            "Forwarded": "host=evil.example",
            "Connection": "keep-alive, X-Private",
            "X-Private": "hop",
            "X-Request-ID": "req-42",
            "Accept": "application/dicom+json",
        },
    )
    seen = fake.received[0].headers
    for absent in ("authorization", "cookie", "x-forwarded-host", "forwarded", "x-private"):
        assert absent not in seen
    assert seen["host"] == f"127.0.0.1:{fake.port}"
    assert seen["via"] == "1.1 dicomweb-proxy"
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-request-id"] == "req-42"
    assert seen["accept"] == "application/dicom+json"
    assert response.headers["X-Request-ID"] == "req-42"


async def test_generated_request_id_when_missing_or_forged(
    proxy_to: Callable[..., Any], fake: FakeUpstream
) -> None:
    client = await proxy_to(fake.dicomweb)
    response = await client.get("/dicom-web/echo", headers={"X-Request-ID": "a b\tc"})
    generated = response.headers["X-Request-ID"]
    assert len(generated) == 32 and generated.isalnum()
    assert fake.received[0].headers["X-Request-ID"] == generated


async def test_url_headers_and_wadl_rewritten(
    proxy_to: Callable[..., Any], fake: FakeUpstream
) -> None:
    headers = {
        "Location": f"{ARCHIVE}/studies/1.2.3",
        "Content-Location": f"{ARCHIVE}/studies/1.2.3",
        "Warning": f'299 {ARCHIVE} "stored with warnings"',
        "Content-Type": "application/vnd.sun.wadl+xml",
    }
    wadl = Answer(201, f'<resources base="{ARCHIVE}/"/>', headers)
    fake.route("*", "/dicom-web/location", wadl)
    client = await proxy_to(fake.dicomweb, public_url="https://edge.example/dicom-web")
    response = await client.options("/dicom-web/location")
    public = "https://edge.example/dicom-web"
    assert response.headers["Location"] == f"{public}/studies/1.2.3"
    assert response.headers["Content-Location"] == f"{public}/studies/1.2.3"
    assert response.headers["Warning"] == f'299 {public} "stored with warnings"'
    assert await response.text() == f'<resources base="{public}/"/>'


@pytest.mark.parametrize(
    "raw_path",
    [
        "/dicom-web/studies/%2e%2e/%2e%2e/admin",
        "/dicom-web/studies/%2E%2E",
        "/dicom-web/studies%2f..%2fsecret",
        "/dicom-web/studies/..%5c..%5cwindows",
        "/dicom-web/studies/1.2/series/.%2e/x",
    ],
)
async def test_path_traversal_refused(
    proxy_to: Callable[..., Any], fake: FakeUpstream, raw_path: str
) -> None:
    client = await proxy_to(fake.dicomweb)
    url = client.make_url("").with_path(raw_path, encoded=True)
    async with client.session.get(url) as response:
        assert response.status == 400
        await problem(response)


async def test_plain_dot_segments_never_reach_the_upstream(
    fake: FakeUpstream, proxy_to: Callable[..., Any]
) -> None:
    client = await proxy_to(fake.dicomweb)
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(b"GET /dicom-web/studies/../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    assert status_line.split()[1] in {b"400", b"404"}
    assert fake.count() == 0


@pytest.mark.parametrize(
    "path",
    [
        "/dicom-web/studies/abc/metadata",
        "/dicom-web/studies/1.2.3/series/01.2",
        "/dicom-web/studies/" + "1." * 40 + "1",
    ],
)
async def test_malformed_uids_refused(
    proxy_to: Callable[..., Any], fake: FakeUpstream, path: str
) -> None:
    client = await proxy_to(fake.dicomweb)
    response = await client.get(path)
    assert response.status == 400
    assert "UID" in (await problem(response))["detail"]


async def test_unknown_route_is_a_problem_404(
    proxy_to: Callable[..., Any], fake: FakeUpstream
) -> None:
    client = await proxy_to(fake.dicomweb)
    response = await client.get("/elsewhere")
    assert response.status == 404
    await problem(response)


async def test_absolute_form_target_cannot_reach_another_host(
    fake: FakeUpstream, proxy_to: Callable[..., Any]
) -> None:
    victim = fake
    client = await proxy_to(f"http://127.0.0.1:{free_port()}/dicom-web")
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    target = f"http://127.0.0.1:{victim.port}/dicom-web/studies"
    writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{victim.port}\r\n\r\n".encode())
    await writer.drain()
    await reader.readline()
    writer.close()
    assert victim.count() == 0


async def test_rewrites_a_host_the_upstream_announces_itself(
    fake: FakeUpstream, proxy_to: Callable[..., Any], orthanc: Orthanc, study: Study
) -> None:
    """Orthanc behind a relay announces pacs.internal, not the address the proxy dials."""
    fake.origin = orthanc.url
    fake.route("*", "/{path:.*}", lambda seen: fake.forward(seen, {"Host": "pacs.internal:8042"}))
    client = await proxy_to(fake.dicomweb)
    series_uid, sop_uid, _ = study.instances[0]
    public = f"http://127.0.0.1:{client.port}/dicom-web"
    for path in (
        f"/dicom-web/studies?StudyInstanceUID={study.uid}",
        f"/dicom-web/studies/{study.uid}/series/{series_uid}/metadata",
    ):
        response = await client.get(path, headers={"Accept": "application/dicom+json"})
        text = await response.text()
        assert "pacs.internal" not in text and str(orthanc.port) not in text
        assert public in text
    # Every rewritten BulkDataURI is fetchable through the proxy.
    meta = await (await client.get(f"/dicom-web/studies/{study.uid}/metadata")).json()
    uris = [v["BulkDataURI"] for item in meta for v in item.values() if "BulkDataURI" in v]
    assert uris
    for uri in uris[:3]:
        fetched = await client.get(uri.replace(f"http://127.0.0.1:{client.port}", ""))
        assert fetched.status == 200
        assert len(await fetched.read()) > 0
    assert sop_uid


async def test_json_is_gzipped_for_clients_that_accept_it(
    proxy_to: Callable[..., Any], orthanc: Orthanc, study: Study
) -> None:
    client = await proxy_to(orthanc.dicomweb)
    response = await client.get(
        f"/dicom-web/studies/{study.uid}/metadata", headers={"Accept-Encoding": "gzip"}
    )
    assert response.headers["Content-Encoding"] == "gzip"
    assert len(await response.json()) == 6


async def test_cors_preflight_and_origin_echo(
    proxy_to: Callable[..., Any], fake: FakeUpstream
) -> None:
    fake.route("GET", "/dicom-web/echo", Answer(body="{}"))
    client = await proxy_to(fake.dicomweb, cors_origins=("https://viewer.example",))
    preflight = await client.options(
        "/dicom-web/studies",
        headers={"Origin": "https://viewer.example", "Access-Control-Request-Method": "GET"},
    )
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://viewer.example"
    denied = await client.options(
        "/dicom-web/studies",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert denied.status == 403
    plain = await client.get("/dicom-web/echo", headers={"Origin": "https://viewer.example"})
    assert plain.headers["Access-Control-Allow-Origin"] == "https://viewer.example"


async def test_health_and_readiness(proxy_to: Callable[..., Any], orthanc: Orthanc) -> None:
    client = await proxy_to(orthanc.dicomweb)
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200 and (await ready.json())["ready"] is True
    down = await proxy_to(f"http://127.0.0.1:{free_port()}/dicom-web")
    not_ready = await down.get("/readyz")
    assert not_ready.status == 503
    assert (await not_ready.json())["upstream"] == "Upstream unreachable"


async def test_readiness_asks_the_upstream_at_most_every_five_seconds(
    fake: FakeUpstream, proxy_to: Callable[..., Any], orthanc: Orthanc
) -> None:
    fake.origin = orthanc.url
    client = await proxy_to(fake.dicomweb)
    for _ in range(10):
        assert (await client.get("/readyz")).status == 200
    assert fake.count() == 1
