"""The access log: one line per request, no query values, no secrets (SPEC sections 4, 6)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from harness.dicomgen import Study, make_study
from harness.net import free_port
from harness.orthanc import Orthanc
from proxy import logs, metrics, state
from proxy.app import create_app
from tests.support import ProxyThread, eventually, eventually_async, make_settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("raw", "logged"),
    [
        ("/dicom-web/studies", "/dicom-web/studies"),
        ("/dicom-web/studies?PatientName=Doe%5EJane", "/dicom-web/studies?PatientName="),
        ("/s?PatientName=Doe^Jane&StudyDate=20261120-", "/s?PatientName=&StudyDate="),
        ("/s?00100010=Doe&includefield=all&limit=1", "/s?00100010=&includefield=&limit="),
        ("/s?Doe^Jane", "/s?*"),
        ("/s?Jane%20Doe=x", "/s?*="),
        ("/s?a=1&&b", "/s?a=&*"),
        ("/s\x01x?", "/s?x?"),
    ],
)
def test_safe_path_drops_query_values(raw: str, logged: str) -> None:
    assert logs.safe_path(raw) == logged


def test_text_line_names_every_field() -> None:
    record = {
        "method": "GET",
        "path": "/dicom-web/studies?PatientName=",
        "status": 200,
        "bytes": 1234,
        "duration_ms": 12.345,
        "cache": "HIT",
        "upstream_ms": None,
        "request_id": "abc",
        "remote": "127.0.0.1",
    }
    assert logs.text_line(record) == (
        "GET /dicom-web/studies?PatientName= 200 1234B 12.3ms cache=HIT upstream=- "
        "id=abc remote=127.0.0.1"
    )


async def test_ring_buffer_keeps_the_last_records(
    aiohttp_client: Callable[..., TestClient],
) -> None:
    app = web.Application(middlewares=[logs.access_middleware], handler_args=logs.handler_args())
    app[state.METRICS] = metrics.Metrics()
    logs.setup(app)

    async def handler(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/x", handler)
    client = await aiohttp_client(app)
    for number in range(logs.RECENT_SIZE + 5):
        await client.get(f"/x?n={number}", headers={"X-Request-ID": f"r{number}"})
    recent = list(app[state.RECENT])
    assert len(recent) == logs.RECENT_SIZE
    assert recent[-1]["request_id"] == f"r{logs.RECENT_SIZE + 4}"
    assert recent[-1]["path"] == "/x?n="
    assert recent[-1]["bytes"] > len("ok")


# -- the real command, JSON lines on stderr --------------------------------------------


def wait_for(url: str, timeout: float = 20.0) -> None:
    def up() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except (urllib.error.URLError, ConnectionError):
            return False

    eventually(up, timeout=timeout, interval=0.05, message=f"{url} did not come up")


@pytest.fixture
def json_proxy(orthanc: Orthanc, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    stderr = open(tmp_path / "stderr.log", "w+b")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "proxy",
            "serve",
            "--upstream-url",
            orthanc.dicomweb,
            "--listen",
            f"127.0.0.1:{port}",
            "--data-dir",
            str(tmp_path / "data"),
            "--log-format",
            "json",
            "--admin-token",
            "admin-token-never-logged",
        ],
        cwd=ROOT,
        stderr=stderr,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/healthz")
        yield f"http://127.0.0.1:{port}", process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
        stderr.close()


def test_json_lines_carry_request_id_and_no_secrets_or_query_values(
    json_proxy: tuple[str, subprocess.Popen[bytes]], study: Study, tmp_path: Path
) -> None:
    url, process = json_proxy
    query = f"{url}/dicom-web/studies?PatientName=Doe%5EJane&StudyInstanceUID={study.uid}"
    request = urllib.request.Request(
        query,
        headers={"Authorization": "Bearer client-credential-xyz", "X-Request-ID": "log-test-1"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
        response.read()
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0

    output = (tmp_path / "stderr.log").read_text()
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]
    access = [line for line in lines if line["logger"] == "dicomweb_proxy.access"]
    (qido,) = [line for line in access if line["request_id"] == "log-test-1"]
    assert qido["method"] == "GET"
    assert qido["path"] == "/dicom-web/studies?PatientName=&StudyInstanceUID="
    assert qido["status"] == 200
    assert qido["transaction"] == "qido"
    assert qido["bytes"] > 0
    assert qido["duration_ms"] > 0
    assert qido["upstream_ms"] > 0
    assert qido["cache"] is None
    for secret in ("Doe", "Jane", study.uid, "client-credential-xyz", "admin-token-never-logged"):
        assert secret not in output
    starting = [line for line in lines if line.get("message", "").startswith("starting")]
    assert starting and "'admin_token': '***'" in starting[0]["message"]


def test_text_format_is_one_line_per_request(
    caplog: pytest.LogCaptureFixture, orthanc: Orthanc, start_proxy: Callable[..., object]
) -> None:
    proxy = start_proxy(orthanc.dicomweb)
    with caplog.at_level(logging.INFO, logger="dicomweb_proxy.access"):
        url = f"{proxy.dicomweb}/studies?PatientName=Doe%5EJane"  # type: ignore[attr-defined]
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.status == 200
            response.read()
        # The line is written once the last byte was sent, which may be just after the
        # client has read it.
        lines = eventually(
            lambda: [r.getMessage() for r in caplog.records if r.name == "dicomweb_proxy.access"],
            message="no access line was written",
        )
    (message,) = lines
    assert message.startswith("GET /dicom-web/studies?PatientName= 200 ")
    assert "Doe" not in message


# -- bytes: what went out on the wire, sendfile included --------------------------------


def _one_exchange(port: int, target: str, headers: dict[str, str]) -> bytes:
    """Every byte of the answer to one request on a connection of its own
    (``Connection: close``: answered through aiohttp, never the express lane)."""
    lines = [f"GET {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        received = b""
        while chunk := sock.recv(1 << 20):
            received += chunk
    return received


@pytest.mark.parametrize(
    ("what", "headers", "answered"),
    [
        # ≈128 KiB sent as stored: the head with MSG_MORE, the body with sendfile
        ("instance", {"Accept": 'multipart/related; type="application/dicom"'}, b"200 OK"),
        ("instance", {"Accept": "*/*", "Range": "bytes=100-70099"}, b"206 Partial Content"),
        ("metadata", {"Accept": "application/dicom+json", "Accept-Encoding": "gzip"}, b"200 OK"),
    ],
)
def test_the_line_of_a_hit_counts_every_byte_sent(
    proxy: ProxyThread, orthanc: Orthanc, what: str, headers: dict[str, str], answered: bytes
) -> None:
    big = make_study(1, 1, rows=256, columns=256)
    for _, _, data in big.instances:
        orthanc.upload(data)
    series_uid, sop_uid, _ = big.instances[0]
    target = f"{proxy.settings.base_path}/studies/{big.uid}"
    target += "/metadata" if what == "metadata" else f"/series/{series_uid}/instances/{sop_uid}"
    port = proxy.settings.listen_port
    assert b"X-Cache: MISS" in _one_exchange(port, target, headers)

    def a_hit() -> bytes | None:  # the fill commits just after its last byte
        answer = _one_exchange(port, target, {**headers, "X-Request-ID": "hit-1"})
        return answer if b"X-Cache: HIT" in answer else None

    hit = eventually(a_hit, message="no hit")
    assert hit.split(b"\r\n", 1)[0].endswith(answered)
    if what == "metadata":
        assert b"Content-Encoding: gzip" in hit
    assert proxy.app is not None
    recent = proxy.app[state.RECENT]
    (record,) = eventually(lambda: [r for r in recent if r["request_id"] == "hit-1"][-1:])
    assert (record["cache"], record["bytes"]) == ("HIT", len(hit))


# -- one account per request, from aiohttp's access logger ------------------------------


def _accounting_app(**handler_args: object) -> web.Application:
    """An app accounted as the proxy's is: the middleware, and the access logger."""
    app = web.Application(
        middlewares=[logs.access_middleware],
        handler_args={**logs.handler_args(), **handler_args},
    )
    app[state.METRICS] = metrics.Metrics()
    logs.setup(app)
    return app


def _requests_counted(app: web.Application) -> float:
    return app[state.METRICS].total("dicomweb_proxy_requests_total")


async def _serve(
    aiohttp_server: Callable[..., object], app: web.Application, routes: dict[str, Any]
) -> Any:
    """``app`` serving ``routes`` and ``/later`` (for :func:`_then_one_more`)."""
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    app.router.add_get("/later", _later)
    return await aiohttp_server(app)  # type: ignore[operator]


async def _later(request: web.Request) -> web.Response:
    return web.Response(text="later")


async def _recorded_then_one_more(app: web.Application, port: int) -> list[logs.AccessRecord]:
    await eventually_async(lambda: app[state.RECENT], message="the request was not recorded")
    return await _then_one_more(app, port)


async def _then_one_more(
    app: web.Application, port: int, later: str = "/later"
) -> list[logs.AccessRecord]:
    """The records once a later request was accounted too: an account of the first
    one written twice would have come before it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {later} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await reader.read()
    writer.close()
    await eventually_async(
        lambda: any(r["path"] == later for r in app[state.RECENT]),
        message="the later request was not recorded",
    )
    return [r for r in app[state.RECENT] if r["path"] != later]


async def test_requests_are_counted_whatever_the_access_log_level(
    aiohttp_client: Callable[..., TestClient], caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp asks its access logger whether it is enabled, by default from the log
    level: at ``--log-level warning`` the metrics and the ring must still count."""
    app = _accounting_app()

    async def handler(request: web.Request) -> web.Response:
        return web.Response(text="ok", headers={"X-Cache": "HIT"})

    app.router.add_get("/x", handler)
    client = await aiohttp_client(app)
    with caplog.at_level(logging.WARNING, logger="dicomweb_proxy.access"):
        for _ in range(3):
            assert (await client.get("/x")).status == 200
        await eventually_async(lambda: len(app[state.RECENT]) == 3, message="not all kept")
    found = app[state.METRICS]
    assert (
        found.value(
            "dicomweb_proxy_requests_total", transaction="other", method="GET", status="200"
        )
        == 3
    )
    assert found.value("dicomweb_proxy_cache_requests_total", result="hit") == 3
    assert not [r for r in caplog.records if r.name == "dicomweb_proxy.access"]


async def test_a_problem_response_is_logged_once(
    aiohttp_client: Callable[..., TestClient],
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    app = create_app(make_settings(f"http://127.0.0.1:{free_port()}/dicom-web", tmp_path))
    client = await aiohttp_client(app)
    with caplog.at_level(logging.INFO, logger="dicomweb_proxy.access"):
        response = await client.get("/nowhere", headers={"X-Request-ID": "missing-1"})
        assert response.status == 404
        body = await response.read()
        port = client.server.port  # type: ignore[union-attr]
        records = await _then_one_more(app, port, later="/healthz")
    (record,) = records
    assert (record["status"], record["request_id"]) == (404, "missing-1")
    assert record["bytes"] > len(body)
    lines = [r for r in caplog.records if r.name == "dicomweb_proxy.access"]
    assert [r.access["request_id"] for r in lines].count("missing-1") == 1  # type: ignore[attr-defined]
    labels = {"transaction": "other", "method": "GET", "status": "404"}
    assert app[state.METRICS].value("dicomweb_proxy_requests_total", **labels) == 1


async def test_client_gone_mid_body_is_logged_as_499_once(
    aiohttp_server: Callable[..., object],
) -> None:
    app = _accounting_app()
    sent = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(2000):  # bounded: ~20 s at most
            await response.write(b"x" * 1024)
            sent.set()
            await asyncio.sleep(0.01)
        return response

    server = await _serve(aiohttp_server, app, {"/slow": endless})
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /slow?PatientName=Doe HTTP/1.1\r\nHost: x\r\n\r\n")
    await reader.readuntil(b"\r\n\r\n")
    await sent.wait()
    writer.close()
    await writer.wait_closed()
    (record,) = await _recorded_then_one_more(app, server.port)
    assert record["status"] == 499
    assert record["path"] == "/slow?PatientName="
    assert _requests_counted(app) == 2


async def test_a_cancelled_handler_is_accounted_once_as_499(
    aiohttp_server: Callable[..., object],
) -> None:
    """aiohttp calls no access logger for a cancelled handler (here: cancelled when its
    client went away, ``handler_cancellation``); the middleware's request accounts it."""
    app = _accounting_app(handler_cancellation=True)
    started = asyncio.Event()

    async def waits(request: web.Request) -> web.Response:
        started.set()
        await asyncio.Event().wait()  # until cancelled
        return web.Response()

    server = await _serve(aiohttp_server, app, {"/waits": waits})
    _, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /waits?PatientName=Doe HTTP/1.1\r\nHost: x\r\n\r\n")
    await started.wait()
    writer.close()
    await writer.wait_closed()
    (record,) = await _recorded_then_one_more(app, server.port)
    assert (record["status"], record["path"]) == (499, "/waits?PatientName=")
    assert _requests_counted(app) == 2


async def test_a_handler_failing_after_its_head_is_accounted_once_as_500(
    aiohttp_server: Callable[..., object],
) -> None:
    """aiohttp cannot answer 500 once a response began: it closes the connection and
    calls no access logger.  The request is accounted all the same."""
    app = _accounting_app()

    async def fails(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"part")
        raise RuntimeError("a bug, mid-body")

    server = await _serve(aiohttp_server, app, {"/fails": fails})
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /fails HTTP/1.1\r\nHost: x\r\n\r\n")
    await reader.read()  # aiohttp closes the connection
    writer.close()
    (record,) = await _recorded_then_one_more(app, server.port)
    assert record["status"] == 500
    assert _requests_counted(app) == 2


async def test_a_request_that_reached_no_handler_is_not_accounted(
    aiohttp_server: Callable[..., object],
) -> None:
    """aiohttp answers an unparsable request itself (400) and calls its access logger
    for it; the proxy never accounted those, and does not now."""
    app = _accounting_app()

    server = await _serve(aiohttp_server, app, {})
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await reader.read()).split(b"\r\n", 1)[0].endswith(b" 400 Bad Request")
    writer.close()
    assert await _then_one_more(app, server.port) == []
    assert _requests_counted(app) == 1


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /later HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /later HTTP/1.0\r\n\r\n",  # HTTP/1.0: closed after the answer
    ],
)
async def test_a_connection_closed_after_its_answer_is_logged_with_its_status(
    aiohttp_server: Callable[..., object], request_bytes: bytes
) -> None:
    """The access logger reports 499 when the connection closed before the end; one
    that closes because the client asked for it is still a 200."""
    app = _accounting_app()
    server = await _serve(aiohttp_server, app, {})
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(request_bytes)
    answer = await reader.read()
    writer.close()
    assert answer.split(b"\r\n", 1)[0].endswith(b" 200 OK")
    await eventually_async(lambda: app[state.RECENT], message="the request was not recorded")
    (record,) = app[state.RECENT]
    assert (record["status"], record["path"]) == (200, "/later")
