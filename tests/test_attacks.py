"""Hostile clients: each attack is a clear rejection and never reaches an upstream.

The fake upstream stands where the upstream is, answering 503 to everything (and a second
one where a victim host is), so every test can assert that nothing was forwarded.
Related tests elsewhere: basic
traversal and absolute-form in ``test_forward.py``, credential partitions under
passthrough in ``tests/auth/test_partition.py``, spool disk full in
``tests/stow/test_stow.py``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.net import free_port
from tests.fake_upstream import Answer, FakeUpstream

ADMIN = "admin-token-s3cret"
DICOM = 'multipart/related; type="application/dicom"; boundary=b'


@pytest.fixture
def down(fake: FakeUpstream) -> FakeUpstream:
    """The fake upstream counting requests and answering each 503."""
    fake.route("*", "/{path:.*}", Answer(503, "down"))
    return fake


@pytest.fixture
def victim() -> Iterator[FakeUpstream]:
    """Another host, which no request may reach."""
    with FakeUpstream() as started:
        yield started


async def raw_exchange(port: int, data: bytes, *, wait: float = 10.0) -> bytes:
    """Send raw bytes (asking the proxy to close after answering); everything it
    answers until it closes (or ``wait``)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data.replace(b"\r\n", b"\r\nConnection: close\r\n", 1))
    await writer.drain()
    answer = b""
    try:
        async with asyncio.timeout(wait):
            while not _whole_response(answer) and (chunk := await reader.read(65536)):
                answer += chunk
    except TimeoutError:
        pass
    writer.close()
    return answer


def _whole_response(answer: bytes) -> bool:
    """Headers and a Content-Length body read: aiohttp may linger reading the rest of a
    refused body before it closes, and the test need not wait for that."""
    head, found, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if found and line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else 0


# -- no open proxy, no SSRF -------------------------------------------------------------


@pytest.mark.parametrize(
    "request_line",
    [
        "GET http://{victim}/dicom-web/studies HTTP/1.1",
        "GET http://{victim}/ HTTP/1.1",
        "GET https://{victim}/dicom-web/studies HTTP/1.1",
        "CONNECT {victim} HTTP/1.1",
        "GET //{victim}/dicom-web/studies HTTP/1.1",
        "GET {victim}/dicom-web/studies HTTP/1.1",
    ],
)
async def test_no_request_reaches_another_host(
    down: FakeUpstream,
    victim: FakeUpstream,
    proxy_to: Callable[..., Any],
    request_line: str,
) -> None:
    client = await proxy_to(down.dicomweb)
    host = f"127.0.0.1:{victim.port}"
    head = request_line.format(victim=host)
    answer = await raw_exchange(client.port, f"{head}\r\nHost: {host}\r\n\r\n".encode(), wait=3)
    assert victim.count() == 0
    assert down.count() == 0
    assert status_of(answer) in {400, 404, 405}


async def test_userinfo_lookalike_stays_a_path_on_the_configured_upstream(
    down: FakeUpstream, victim: FakeUpstream, proxy_to: Callable[..., Any]
) -> None:
    """``/dicom-web/studies@victim/x`` is a path below the base, nothing more: it goes to
    the configured upstream (which answers for it), never to the named host."""
    client = await proxy_to(down.dicomweb)
    host = f"127.0.0.1:{victim.port}"
    answer = await raw_exchange(
        client.port,
        f"GET /dicom-web/studies@{host}/x HTTP/1.1\r\nHost: {host}\r\n\r\n".encode(),
        wait=3,
    )
    assert status_of(answer) == 503  # the configured upstream's answer
    assert victim.count() == 0
    assert [received.path_qs for received in down.received] == [f"/dicom-web/studies@{host}/x"]


async def test_host_and_forwarded_headers_do_not_route(
    down: FakeUpstream, victim: FakeUpstream, proxy_to: Callable[..., Any]
) -> None:
    """Host / X-Forwarded-Host / Forwarded name a victim: the configured upstream is asked,
    the victim never; with an invalid Host the request is refused before forwarding."""
    client = await proxy_to(down.dicomweb)
    host = f"127.0.0.1:{victim.port}"
    headers = {"X-Forwarded-Host": host, "Forwarded": f"host={host}", "X-Forwarded-Proto": "http"}
    async with client.get("/dicom-web/studies", headers={**headers, "Host": host}) as response:
        await response.read()
    assert victim.count() == 0 and down.count() == 1
    received = dict(down.received[0].headers)
    assert host not in json.dumps(received)  # client host names never go upstream
    before = down.count()
    for bad in ("evil.example/../x", "a b", "evil.example:99999999", "evil.example@x"):
        answer = await raw_exchange(
            client.port, f"GET /dicom-web/studies HTTP/1.1\r\nHost: {bad}\r\n\r\n".encode(), wait=3
        )
        assert status_of(answer) == 400, bad
    assert down.count() == before


# -- traversal, in every encoding ---------------------------------------------------------


@pytest.mark.parametrize(
    "raw_path",
    [
        # Extends test_forward.py's set: double encoding, overlong UTF-8, path parameters
        # (Tomcat/Undertow treat "..;" as ".."), mixed case, control characters.
        "/dicom-web/studies/%252e%252e/%252e%252e/etc",
        "/dicom-web/studies/%252e%252e%252f",
        "/dicom-web/studies/%c0%ae%c0%ae/%c0%ae%c0%ae/etc",
        "/dicom-web/studies/%e0%80%ae%e0%80%ae/etc",
        "/dicom-web/studies/%c0%af..",
        "/dicom-web/studies/..;/..;/admin",
        "/dicom-web/studies/.;/x",
        "/dicom-web/studies/%2e%2e;jsessionid=1/x",
        "/dicom-web/studies/.%2E/x",
        "/dicom-web/studies/1.2%0d%0aX-Injected:%201/metadata",
        "/dicom-web/studies/1.2/series/3.4%00/metadata",
        "/dicom-web/studies/1.2%09/metadata",
        # The same outside UID positions (where a malformed UID would catch them anyway).
        "/dicom-web/..;/admin",
        "/dicom-web/.%2e;x/admin",
        "/dicom-web/%252e%252e/admin",
        "/dicom-web/%252E%252E%252Fadmin",
        "/dicom-web/%c0%ae%c0%ae/admin",
        "/dicom-web/%C1%9C/admin",
        "/dicom-web/%e0%80%ae%e0%80%ae/admin",
    ],
)
async def test_traversal_and_injection_in_paths_refused(
    down: FakeUpstream, proxy_to: Callable[..., Any], raw_path: str
) -> None:
    client = await proxy_to(down.dicomweb)
    url = client.make_url("").with_path(raw_path, encoded=True)
    async with client.session.get(url) as response:
        # 404 where aiohttp's router already refuses a decoded CR/LF in the path.
        assert response.status in {400, 404}
        document = await response.json(content_type=None)
        assert document["status"] == response.status
    assert down.count() == 0


async def test_crlf_in_header_values_never_reaches_the_upstream(
    down: FakeUpstream, proxy_to: Callable[..., Any]
) -> None:
    client = await proxy_to(down.dicomweb)
    for header in (b"Accept: a\rInjected: 1", b"X-Request-ID: a\r\x00b", b"Accept: \x00"):
        answer = await raw_exchange(
            client.port,
            b"GET /dicom-web/studies HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n\r\n",
            wait=3,
        )
        assert status_of(answer) == 400, header
    assert down.count() == 0


# -- oversized ----------------------------------------------------------------------------


async def test_oversized_headers_and_lines_refused(
    down: FakeUpstream, proxy_to: Callable[..., Any]
) -> None:
    client = await proxy_to(down.dicomweb)
    for head in (
        b"GET /dicom-web/studies HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n",
        b"GET /dicom-web/studies?" + b"q" * 40_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /dicom-web/studies HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-%d: 1\r\n" % n for n in range(200))
        + b"\r\n",
    ):
        answer = await raw_exchange(client.port, head, wait=3)
        assert status_of(answer) in {400, 413, 431}
    assert down.count() == 0


@pytest.mark.parametrize("chunked", [False, True])
async def test_max_body_refuses_stow_before_anything_is_sent(
    down: FakeUpstream, proxy_to: Callable[..., Any], chunked: bool
) -> None:
    client = await proxy_to(down.dicomweb, max_body=1000)
    body = b"--b\r\nContent-Type: application/dicom\r\n\r\n" + b"x" * 5000 + b"\r\n--b--\r\n"

    async def stream() -> Any:
        for start in range(0, len(body), 500):
            yield body[start : start + 500]

    data: Any = stream() if chunked else body
    async with client.post("/dicom-web/studies", data=data, headers={"Content-Type": DICOM}) as r:
        assert r.status == 413
    async with client.post(
        "/dicom-web/other", data=body, headers={"Content-Type": "application/octet-stream"}
    ) as response:
        assert response.status == 413
    assert down.count() == 0


# -- slow clients -------------------------------------------------------------------------


async def test_slowloris_headers_are_cut_off(
    down: FakeUpstream, proxy_to: Callable[..., Any]
) -> None:
    """Headers dribbled one byte at a time: the connection is closed once
    ``--client-timeout`` passed since it opened, however steady the dribble."""
    client = await proxy_to(down.dicomweb, client_timeout=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(b"GET /dicom-web/studies HTTP/1.1\r\nHost: x\r\n")
    closed = False
    async with asyncio.timeout(20):  # a guard for a broken build, not a measurement
        for _ in range(10_000):
            try:
                writer.write(b"X")
                await writer.drain()
            except ConnectionError:
                closed = True
                break
            try:
                async with asyncio.timeout(0.1):
                    if await reader.read(1) == b"":
                        closed = True
                        break
            except TimeoutError:
                pass
    writer.close()
    assert closed
    assert down.count() == 0


async def test_a_stalled_request_body_gets_408_and_sends_nothing(
    down: FakeUpstream, proxy_to: Callable[..., Any], tmp_path: Path
) -> None:
    client = await proxy_to(down.dicomweb, client_timeout=0.5)
    head = (
        f"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\nContent-Type: {DICOM}\r\n"
        "Content-Length: 100000\r\n\r\n"
    ).encode()
    answer = await raw_exchange(
        client.port, head + b"--b\r\nContent-Type: application/dicom\r\n\r\nDICM", wait=20
    )
    assert status_of(answer) == 408
    assert b"Request timeout" in answer
    assert down.count() == 0
    spool = tmp_path / "data" / "spool"
    assert not spool.exists() or not any(spool.rglob("*.*"))


# -- admin --------------------------------------------------------------------------------

ADMIN_ROUTES = [
    ("GET", "/admin/cache"),
    ("DELETE", "/admin/cache"),
    ("DELETE", "/admin/cache/studies/1.2.3"),
    ("GET", "/admin/dead-letter"),
    ("GET", "/admin/dead-letter/abc"),
    ("POST", "/admin/dead-letter/abc/replay"),
    ("DELETE", "/admin/dead-letter/abc"),
    ("GET", "/admin/"),
    ("POST", "/admin/ui/dead-letter/abc/replay"),
]


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong", f"Bearer {ADMIN}x", f"Basic {ADMIN}", f"bearer  {ADMIN}", ADMIN],
)
async def test_admin_routes_need_the_exact_token(
    down: FakeUpstream, proxy_to: Callable[..., Any], authorization: str | None
) -> None:
    client = await proxy_to(down.dicomweb, admin_token=ADMIN)
    headers = {"Authorization": authorization} if authorization else {}
    for method, path in ADMIN_ROUTES:
        async with client.request(method, path, headers=headers, allow_redirects=False) as response:
            body = await response.text()
            assert response.status in {401, 303}, (method, path, response.status)
            assert ADMIN not in body
    assert down.count() == 0


async def test_admin_routes_do_not_exist_without_a_token(
    down: FakeUpstream, proxy_to: Callable[..., Any]
) -> None:
    client = await proxy_to(down.dicomweb)
    for method, path in ADMIN_ROUTES:
        async with client.request(method, path, headers={"Authorization": "Bearer x"}) as r:
            assert r.status in {404, 405}, (method, path)


# -- secrets ------------------------------------------------------------------------------


async def test_secrets_and_patient_names_absent_from_logs_and_error_bodies(
    down: FakeUpstream,
    proxy_to: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    # down: every forwarded request fails, errors log the most
    tokens = tmp_path / "tokens"
    tokens.write_text("inbound-token-s3cret\n")
    secrets = ["upstream-pw-s3cret", "inbound-token-s3cret", ADMIN, "wrong-token-s3cret"]
    client = await proxy_to(
        down.dicomweb,
        admin_token=ADMIN,
        upstream_auth="basic",
        upstream_username="proxy",
        upstream_password="upstream-pw-s3cret",
        inbound_auth="bearer",
        inbound_tokens_file=str(tokens),
    )
    names = ["DOE^JANE", "Doe%5EJane", "Doe^Jane"]
    bodies: list[str] = []
    with caplog.at_level(logging.DEBUG):
        for auth in ("Bearer inbound-token-s3cret", "Bearer wrong-token-s3cret", None):
            headers = {"Authorization": auth} if auth else {}
            for path in (
                "/dicom-web/studies?PatientName=Doe%5EJane",
                "/dicom-web/studies/1.2/series?PatientName=DOE^JANE&00100010=DOE^JANE",
                "/dicom-web/studies/..%2f?PatientName=Doe%5EJane",
                "/admin/cache?token=" + ADMIN,
            ):
                async with client.get(path, headers=headers) as response:
                    bodies.append(await response.text())
            async with client.post(
                "/dicom-web/studies?PatientName=Doe%5EJane",
                data=b"--b\r\n\r\nDOE^JANE\r\n--b--\r\n",
                headers={**headers, "Content-Type": DICOM},
            ) as response:
                bodies.append(await response.text())
    # aiohttp.access is the test server's own access log (the proxy runs without it).
    ours = [record for record in caplog.records if record.name != "aiohttp.access"]
    text = "\n".join(bodies) + "\n".join(record.getMessage() + str(record.args) for record in ours)
    assert any("dicomweb_proxy" in record.name for record in caplog.records)
    for secret in secrets + names:
        assert secret not in text, secret
    assert base64.b64encode(b"proxy:upstream-pw-s3cret").decode() not in text


@pytest.mark.parametrize("fault", ["stall", "oversize"])
async def test_a_client_body_fault_on_a_streamed_forward_is_the_clients(
    fake: FakeUpstream, proxy_to: Callable[..., Any], fault: str
) -> None:
    """Bodies that are not STOW stream straight to the upstream, so the upstream request
    has begun; a stalled or oversized body still answers 408/413, not a 502 blaming the
    upstream."""

    fake.route("*", "/dicom-web/{path:.*}", Answer(body="stored"))  # once the body is in
    client = await proxy_to(fake.dicomweb, client_timeout=0.5, max_body=1000)
    if fault == "stall":
        length, body, expected = "Content-Length: 900", b"abc", 408
    else:
        length, body, expected = "Transfer-Encoding: chunked", b"7d0\r\n" + b"x" * 2000, 413
    head = f"PUT /dicom-web/other HTTP/1.1\r\nHost: x\r\n{length}\r\n\r\n".encode()
    answer = await raw_exchange(client.port, head + body, wait=20)
    assert status_of(answer) == expected


async def test_slowloris_on_the_metrics_port_is_cut_off_too(
    down: FakeUpstream, proxy_to: Callable[..., Any]
) -> None:
    port = free_port()
    await proxy_to(down.dicomweb, client_timeout=0.5, metrics_listen=f"127.0.0.1:{port}")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
    await writer.drain()
    async with asyncio.timeout(20):  # a guard for a broken build, not a measurement
        assert await reader.read() == b""  # closed by the proxy, no response
    writer.close()


async def test_client_timeout_does_not_cut_a_request_being_answered(
    fake: FakeUpstream, proxy_to: Callable[..., Any]
) -> None:
    """The header bound ends once the request is in: a slow answer, and a slow download,
    outlast --client-timeout."""
    fake.route("GET", "/dicom-web/studies/9.1/stall", Answer(body="late", delay=1))
    client = await proxy_to(fake.dicomweb, client_timeout=0.3, upstream_timeout=5)
    async with client.get("/dicom-web/studies/9.1/stall") as response:
        assert response.status == 200
        assert await response.text() == "late"
