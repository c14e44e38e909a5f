"""Upstream and resource faults the chaos test found or the issue lists, one by one."""

from __future__ import annotations

import asyncio
import errno
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from harness.dicomgen import make_study
from harness.net import free_port, wait_port
from harness.orthanc import Orthanc
from proxy.app import create_app
from proxy.cache import fill as fill_module
from proxy.cache import service as cache_service
from proxy.cache.store import free_bytes
from proxy.stow import dead_letter as dead_letter_module
from proxy.stow.parts import SpooledPart
from tests.fake_upstream import DICOM_JSON, Answer, FakeUpstream
from tests.support import FakeClock, eventually_async, make_settings, multipart_stow

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
METADATA = '[{"00080018": {"vr": "UI", "Value": ["1.2.3"]}}, {"00080018": {"vr": "UI"}}]'


@pytest.mark.parametrize("cached", [True, False])
async def test_cut_close_delimited_json_is_an_error_not_a_short_body(
    aiohttp_client: ClientFactory, tmp_path: Path, fake: FakeUpstream, cached: bool
) -> None:
    path = "/dicom-web/studies/1.2/series/1.3/instances/1.4/metadata"
    whole = Answer(body=METADATA, headers=DICOM_JSON, framing="close")  # no length, not chunked
    fake.route("GET", path, whole, first=[replace(whole, drop_after=len(METADATA) // 2)])
    settings = make_settings(fake.dicomweb, tmp_path / "data", no_cache=not cached)
    client = await aiohttp_client(create_app(settings))
    with pytest.raises(aiohttp.ClientPayloadError):
        async with client.get(path) as response:
            await response.read()
    async with client.get(path) as response:
        assert await response.text() == METADATA
    assert fake.count() == 2


async def test_a_count_answer_without_the_count_is_an_upstream_fault_not_a_500(
    aiohttp_client: ClientFactory, fake: FakeUpstream, tmp_path: Path
) -> None:
    """Revalidation asks QIDO for NumberOfStudyRelatedInstances; an upstream that leaves
    it out (or answers garbage) is failing; the entry is answered all the same."""
    fake.route("GET", "/dicom-web/studies/1.2/metadata", Answer(body=METADATA, headers=DICOM_JSON))
    count = '[{"00201208": {"vr": "IS", "Value": [1]}}]'
    qido = fake.route("GET", "/dicom-web/studies", Answer(body=count, headers=DICOM_JSON))
    settings = make_settings(fake.dicomweb, tmp_path / "data")
    clock = FakeClock()
    client = await aiohttp_client(create_app(settings, clock=clock))
    async with client.get("/dicom-web/studies/1.2/metadata") as response:
        assert response.status == 200 and response.headers["X-Cache"] == "MISS"
        await response.read()
    for broken in ("[{}]", '[{"00201208": {"vr": "IS"}}]', "[", '{"a": 1}'):
        qido.answer = Answer(body=broken, headers=DICOM_JSON)
        clock.advance(61)  # past --metadata-ttl (60 s): the next request revalidates
        async with client.get("/dicom-web/studies/1.2/metadata") as response:
            assert response.status == 200, broken
            assert response.headers["X-Cache"] != "HIT", broken  # the count was asked
            assert await response.text() == METADATA


# -- the cache disk full ------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs (root may mount one; this sandbox allows it).  Where mounting is
    not permitted the test skips, and the ``free_bytes`` variant below still runs."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip("mounting a tmpfs is not permitted here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _serve_instances(fake: FakeUpstream, size: int) -> None:
    path = "/dicom-web/studies/1.2/series/1.3/instances/{sop}"
    fake.route("GET", path, lambda received: Answer(body=_body(received.params["sop"], size)))


def _body(sop: str, size: int = 6 * 1024**2) -> bytes:
    return (sop.encode() * size)[:size]


async def _x_cache(client: TestClient[Any, Any], sop: str) -> tuple[str, bytes]:
    async with client.get(f"/dicom-web/studies/1.2/series/1.3/instances/{sop}") as response:
        assert response.status == 200
        return response.headers["X-Cache"], await response.read()


async def test_full_cache_disk_stops_filling_and_keeps_serving(
    aiohttp_client: ClientFactory,
    fake: FakeUpstream,
    tmp_path: Path,
    small_disk: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A real full disk (tmpfs): hits keep coming from the cache; a miss is forwarded and
    not cached, and when a fill runs out of space mid-body the client still gets the
    whole body; nothing is left in tmp/."""
    monkeypatch.setattr(cache_service, "MIN_FREE_BYTES", 4 * 1024**2)
    _serve_instances(fake, 6 * 1024**2)
    settings = make_settings(fake.dicomweb, tmp_path / "data", cache_dir=str(small_disk))
    client = await aiohttp_client(create_app(settings))
    assert (await _x_cache(client, "1.1"))[0] == "MISS"
    assert (await _x_cache(client, "1.1"))[0] == "HIT"
    # Leave 5 MiB: above the threshold, so the next fill starts, and runs out mid-body.
    ballast = small_disk / "ballast"
    ballast.write_bytes(b"\0" * (free_bytes(small_disk) - 5 * 1024**2))
    cache, body = await _x_cache(client, "2.22")
    assert cache == "MISS" and body == _body("2.22")
    # Now below the threshold: misses are forwarded without a fill.
    ballast.write_bytes(b"\0" * (ballast.stat().st_size + free_bytes(small_disk) - 1024**2))
    for _ in range(2):
        cache, body = await _x_cache(client, "3.333")
        assert cache == "MISS" and body == _body("3.333")
    hit, body = await _x_cache(client, "1.1")
    assert hit == "HIT" and body == _body("1.1")
    assert list((small_disk / "tmp").iterdir()) == []


async def test_disk_full_mid_fill_without_a_tmpfs(
    aiohttp_client: ClientFactory,
    fake: FakeUpstream,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same fault where no tmpfs can be mounted: ``os.write`` in the fill fails with
    ENOSPC after 1 MiB.  Two clients share the fill (single flight); both get every
    byte, the entry is not committed, tmp/ is empty; the next request fills normally."""
    written = {"bytes": 0, "limit": 1024**2}
    real_write = fill_module.os.write

    def write(fd: int, data: Any) -> int:
        if written["bytes"] + len(data) > written["limit"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        written["bytes"] += len(data)
        return real_write(fd, data)

    monkeypatch.setattr(fill_module.os, "write", write)
    _serve_instances(fake, 6 * 1024**2)
    settings = make_settings(fake.dicomweb, tmp_path / "data")
    client = await aiohttp_client(create_app(settings))
    results = await asyncio.gather(*(_x_cache(client, "4.4") for _ in range(2)))
    assert [body == _body("4.4") for _, body in results] == [True, True]
    assert list((tmp_path / "data" / "cache" / "tmp").iterdir()) == []
    written["limit"] = 10**12
    assert (await _x_cache(client, "4.4"))[0] == "MISS"
    assert (await _x_cache(client, "4.4"))[0] == "HIT"


# -- kill -9 mid-upload -------------------------------------------------------------------


def _serve(upstream: str, data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "proxy", "serve", "--upstream-url", upstream]
    command += ["--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def test_kill_9_mid_upload_leaves_a_clean_spool_and_sends_nothing(
    orthanc: Orthanc, relay: FakeUpstream, tmp_path: Path
) -> None:
    port, data_dir = free_port(), tmp_path / "data"
    study = make_study(1, 4, rows=64, columns=64)
    boundary = "kill-9-boundary"
    body = (
        b"".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
            for _, _, data in study.instances
        )
        + f"--{boundary}--\r\n".encode()
    )
    head = (
        "POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/related; "
        f'type="application/dicom"; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n'
    ).encode()
    spool = data_dir / "spool"
    proxy = _serve(relay.dicomweb, data_dir, port)
    try:
        await wait_port(port)
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head + body[: len(body) * 3 // 4])  # three instances and a bit
        await writer.drain()
        await eventually_async(
            lambda: spool.exists() and any(p.is_file() for p in spool.rglob("*")),
            timeout=20,
            interval=0.05,
            message="the upload was not spooled",
        )
        proxy.send_signal(signal.SIGKILL)
        proxy.wait(10)
        writer.close()
        assert any(p.is_file() for p in spool.rglob("*")), "the kill left spool files"
        proxy = _serve(relay.dicomweb, data_dir, port)
        await wait_port(port)
        assert not [p for p in spool.rglob("*") if p.is_file()]
        assert relay.received == []  # nothing half-sent, and nothing resent after restart
        assert not (set(_stored(orthanc, study.uid)))
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"http://127.0.0.1:{port}/dicom-web/studies",
                data=body,
                headers={"Content-Type": head.decode().split("Content-Type: ")[1].split("\r\n")[0]},
            ) as response,
        ):
            assert response.status == 200
        assert _stored(orthanc, study.uid) == {sop for _, sop, _ in study.instances}
    finally:
        proxy.kill()
        proxy.wait(10)


def _stored(orthanc: Orthanc, study_uid: str) -> set[str]:
    try:
        found = orthanc.get_json(f"/dicom-web/studies/{study_uid}/instances")
    except Exception:
        return set()
    return {item["00080018"]["Value"][0] for item in found}  # type: ignore[union-attr]


# -- the dead-letter disk full ------------------------------------------------------------


async def test_full_dead_letter_disk_still_reports_every_failure(
    aiohttp_client: ClientFactory,
    relay: FakeUpstream,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The upstream keeps failing and the dead letter cannot be written: the client still
    gets its merged answer naming every instance as failed, and no half-kept entry or
    spool file stays behind."""

    def full(part: SpooledPart, target: Path) -> None:
        target.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dead_letter_module, "_extract", full)
    relay.route("POST", "/dicom-web/studies", Answer(503, "busy", {"Retry-After": "0"}))
    settings = make_settings(
        relay.dicomweb, tmp_path / "data", stow_retries=1, stow_retry_delay=0.01
    )
    client = await aiohttp_client(create_app(settings))
    study = make_study(1, 3, rows=16, columns=16)
    body, content_type = multipart_stow(study, "b")
    headers = {"Content-Type": content_type}
    async with client.post("/dicom-web/studies", data=body, headers=headers) as response:
        assert response.status == 409
        document = await response.json(content_type=None)
    failed = {item["00081155"]["Value"][0] for item in document["00081198"]["Value"]}
    assert failed == {sop for _, sop, _ in study.instances}
    dead_letter = settings.dead_letter_path
    assert not dead_letter.exists() or list(dead_letter.iterdir()) == []
    assert not any(p.is_file() for p in settings.spool_path.rglob("*"))
