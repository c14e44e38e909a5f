"""The access log: one line per request, no query values, no secrets (SPEC sections 4, 6)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from harness.dicomgen import Study
from harness.net import free_port
from harness.orthanc import Orthanc
from proxy import logs, metrics, state
from tests.support import eventually, eventually_async

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
    app = web.Application(middlewares=[logs.access_middleware])
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


async def test_client_gone_mid_body_is_logged_as_499(
    aiohttp_server: Callable[..., object],
) -> None:
    app = web.Application(middlewares=[logs.access_middleware])
    logs.setup(app)

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(2000):  # bounded: ~20 s at most
            await response.write(b"x" * 1024)
            await asyncio.sleep(0.01)
        return response

    app.router.add_get("/slow", endless)
    server = await aiohttp_server(app)  # type: ignore[operator]
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /slow?PatientName=Doe HTTP/1.1\r\nHost: x\r\n\r\n")
    await reader.readuntil(b"\r\n\r\n")
    writer.close()
    await writer.wait_closed()
    await eventually_async(lambda: app[state.RECENT], message="the request was not recorded")
    (record,) = app[state.RECENT]
    assert record["status"] == 499
    assert record["path"] == "/slow?PatientName="
