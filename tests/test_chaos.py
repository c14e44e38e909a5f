"""Chaos: a mixed workload through the proxy (a subprocess) to an upstream that misbehaves.

Viewers retrieve metadata and instances, uploaders send STOW bodies of various sizes,
while the fake upstream in front of a real Orthanc, answering as :class:`tests.chaos.Chaos`
decides, resets, stalls, answers 5xx and 429, truncates bodies in every framing and
restarts, all from a seeded RNG.  Then, with the faults off, the invariants:

- every cached entry is byte-identical to the origin's copy (fetched again through the
  proxy as a HIT, compared with Orthanc direct);
- every uploaded instance is stored in the origin, reported failed to its client, or in
  the dead letter; none acknowledged and missing, none silently lost;
- no spool or cache temp file is left; the proxy's RSS stayed bounded; /readyz is 200;
- no secret and no patient name in the proxy's logs or in any error body.

Run with one worker and with ``--workers 2`` (cross-process single flight under
faults).  Short form here (each bounded to 25 s or 3,000 requests); ``make chaos`` runs
the long form (``CHAOS_SECONDS``, ``CHAOS_REQUESTS``, ``CHAOS_SEED`` override the
bounds and the seed).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from harness.dicomgen import make_study
from harness.net import free_port
from harness.orthanc import Orthanc
from proxy.dicomweb.rewrite import Rewriter
from tests.chaos import (
    Chaos,
    Workload,
    complete,
    dead_lettered,
    leftover_files,
    parts_of,
    rss_kib,
)
from tests.fake_upstream import FakeUpstream

SECONDS = float(os.environ.get("CHAOS_SECONDS", "25"))
REQUESTS = int(os.environ.get("CHAOS_REQUESTS", "3000"))
SEED = int(os.environ.get("CHAOS_SEED", "20261121"))
PASSWORD = "chaos-upstream-pw-s3cret"
ADMIN = "chaos-admin-s3cret"
RSS_LIMIT_KIB = 200 * 1024
PATIENT = ("Doe^Jane", "Doe%5EJane", "DOE^JANE")


@pytest.fixture
def faulty(relay: FakeUpstream) -> Chaos:
    """The fake upstream relaying to Orthanc, with the proxy's credentials required and
    every answer decided by the seeded fault plan."""
    auth = "Basic " + base64.b64encode(f"chaos:{PASSWORD}".encode()).decode()
    relay.check = lambda received: (
        None if received.headers.get("Authorization") == auth else "bad credentials"
    )
    chaos = Chaos(relay, SEED)
    relay.route("*", "/{path:.*}", chaos)
    return chaos


def start_proxy(
    upstream: FakeUpstream, data_dir: Path, workers: int
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    data_dir.mkdir(parents=True)
    (data_dir / "pw").write_text(PASSWORD)
    args = {
        "--upstream-url": upstream.dicomweb,
        "--listen": f"127.0.0.1:{port}",
        "--data-dir": str(data_dir),
        "--upstream-timeout": "1s",
        "--upstream-auth": "basic",
        "--upstream-username": "chaos",
        "--upstream-password-file": str(data_dir / "pw"),
        "--admin-token": ADMIN,
        "--metadata-ttl": "2s",
        "--stow-max-instances": "3",
        "--stow-retries": "4",
        "--stow-retry-delay": "20ms",
        "--log-format": "json",
        "--workers": str(workers),
    }
    command = [sys.executable, "-m", "proxy", "serve"]
    for name, value in args.items():
        command += [name, value]
    with open(data_dir.parent / "proxy.log", "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    return process, port


async def wait_until(url: str, status: int = 200, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url) as response:
                    if response.status == status:
                        return True
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    return False


def proxy_rss_kib(pid: int) -> int:
    """The largest RSS among the proxy and its workers (each is bounded on its own)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return max(rss_kib(int(process)) for process in [pid, *children])


async def sample_rss(pid: int, peak: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(OSError):  # a worker that just exited
            peak[0] = max(peak[0], proxy_rss_kib(pid))
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("workers", [1, 2])
async def test_chaos(orthanc: Orthanc, faulty: Chaos, tmp_path: Path, workers: int) -> None:
    studies = [make_study(2, 3, rows=64, columns=64) for _ in range(3)]
    for study in studies:
        for _, _, data in study.instances:
            orthanc.upload(data)
    data_dir = tmp_path / "data"
    process, port = start_proxy(faulty.fake, data_dir, workers)
    proxy = f"http://127.0.0.1:{port}"
    try:
        assert await wait_until(proxy + "/healthz"), "the proxy did not start"
        figures = await _run(orthanc, faulty, process, proxy, studies, data_dir)
    finally:
        process.send_signal(signal.SIGTERM)
        exit_code = await asyncio.to_thread(process.wait, 60)
    log = (tmp_path / "proxy.log").read_text(errors="replace")
    figures["violations"] += _secrets_in(log, "the proxy log")
    figures["workers"] = workers
    print("\nchaos figures:", json.dumps(figures, indent=1, sort_keys=True))
    if os.environ.get("CHAOS_REPORT"):
        report = Path(os.environ["CHAOS_REPORT"])
        report.with_name(f"{report.stem}-{workers}{report.suffix}").write_text(
            json.dumps(figures, indent=1, sort_keys=True)
        )
    assert figures["violations"] == []
    assert exit_code == 0
    assert sum(figures["faults_injected"].values()) > 0
    assert figures["cache_entries_verified"] > 0


async def _run(
    orthanc: Orthanc,
    faulty: Chaos,
    process: subprocess.Popen[bytes],
    proxy: str,
    studies: list[Any],
    data_dir: Path,
) -> dict[str, Any]:
    stop, peak = asyncio.Event(), [0]
    sampler = asyncio.ensure_future(sample_rss(process.pid, peak, stop))
    restarts = asyncio.ensure_future(faulty.restarts(2.0, stop))
    workload = Workload(proxy, studies, SEED, time.monotonic() + SECONDS, REQUESTS)
    started = time.monotonic()
    await workload.run(viewers=6, uploaders=2)
    elapsed = time.monotonic() - started
    stop.set()
    await restarts
    faulty.enabled = False
    violations = list(workload.violations)
    violations += await _no_leftovers(data_dir)
    cache_stats = await _admin_json(proxy + "/admin/cache")
    verified, cache_violations = await _cache_matches_origin(orthanc, proxy, workload)
    violations += cache_violations
    uploads, upload_violations = _uploads_accounted_for(orthanc, workload, data_dir)
    violations += upload_violations
    if not await wait_until(proxy + "/readyz", 200, 30):
        violations.append("the proxy is not ready after the faults stopped")
    await sampler
    peak[0] = max(peak[0], proxy_rss_kib(process.pid))
    if peak[0] > RSS_LIMIT_KIB:
        violations.append(f"proxy RSS peaked at {peak[0]} KiB")
    if faulty.fake.refused:
        violations.append(f"{len(faulty.fake.refused)} upstream requests without the credentials")
    for body in workload.bodies:
        violations += _secrets_in(body.decode(errors="replace"), "an error body")
    return {
        "seed": SEED,
        "seconds": round(elapsed, 1),
        "requests_sent": dict(workload.sent),
        "requests_total": workload.total,
        "upstream_requests": len(faulty.fake.received),
        "responses": dict(workload.statuses),
        "faults_injected": dict(faulty.injected),
        "cache_entries_verified": verified,
        "cache_index": {k: cache_stats.get(k) for k in ("entries", "bytes", "hit_ratio")},
        "uploads": uploads,
        "peak_rss_mib": round(peak[0] / 1024, 1),
        "violations": violations,
    }


async def _admin_json(url: str) -> dict[str, Any]:
    """Entries in the index count study revalidation states too, not only bodies."""
    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        document: dict[str, Any] = await response.json()
        return document


async def _no_leftovers(data_dir: Path) -> list[str]:
    """Fills and uploads finish in the background; give them time, then look."""
    deadline = time.monotonic() + 30
    while leftover_files(data_dir) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    return [f"left behind: {path}" for path in leftover_files(data_dir)]


async def _cache_matches_origin(
    orthanc: Orthanc, proxy: str, workload: Workload
) -> tuple[int, list[str]]:
    """Each resource a viewer got: through the proxy again (a HIT, or a fill then a HIT),
    compared with Orthanc direct (whose URLs the proxy would rewrite to its own)."""
    rewriter = Rewriter(orthanc.dicomweb, proxy + "/dicom-web")
    verified, violations = 0, []
    async with aiohttp.ClientSession() as session:
        for path, accept in sorted(workload.fetched):
            got = await _get(session, proxy + path, accept)
            if got[1] != "HIT":
                got = await _get(session, proxy + path, accept)
            status, cache, content_type, body = got
            if status != 200 or cache not in {"HIT", "REVALIDATED"}:
                violations.append(f"{path}: {status} X-Cache {cache} with the faults off")
                continue
            _, _, direct_type, direct = await _get(session, orthanc.url + path, accept)
            if not await _same(body, content_type, direct, direct_type, rewriter):
                violations.append(f"{path}: the cached copy differs from the origin's")
            verified += 1
    return verified, violations


async def _get(
    session: aiohttp.ClientSession, url: str, accept: str
) -> tuple[int, str, str, bytes]:
    async with session.get(url, headers={"Accept": accept}) as response:
        body = await response.read()
        return (
            response.status,
            response.headers.get("X-Cache", ""),
            response.headers.get("Content-Type", ""),
            body,
        )


async def _same(
    body: bytes, content_type: str, direct: bytes, direct_type: str, rewriter: Rewriter
) -> bool:
    if await complete(body, content_type):
        return False
    if content_type.startswith("multipart/"):
        # Orthanc draws a new boundary per response: compare the parts' bytes.
        return await parts_of(body, content_type) == await parts_of(direct, direct_type)
    if "json" in content_type:
        return bool(json.loads(body) == json.loads(rewriter.rewrite_bytes(direct)))
    return body == direct


def _uploads_accounted_for(
    orthanc: Orthanc, workload: Workload, data_dir: Path
) -> tuple[dict[str, int], list[str]]:
    kept = dead_lettered(data_dir)
    tally: Counter[str] = Counter()
    violations = []
    for upload in workload.uploads:
        stored = _stored(orthanc, upload.study.uid)
        whole_request_failed = bool(upload.error) or upload.status not in {200, 202, 409}
        for _, sop, _ in upload.study.instances:
            tally["instances"] += 1
            if sop in stored:
                tally["stored"] += 1
            if sop in upload.referenced and sop not in stored:
                violations.append(f"STOW {sop}: acknowledged as stored, not in the origin")
            elif sop in upload.failed or whole_request_failed:
                tally["reported_failed"] += 1
            elif sop in kept:
                tally["dead_lettered"] += 1
            elif sop not in stored and sop not in upload.referenced:
                violations.append(f"STOW {sop}: silently lost (status {upload.status})")
        tally["dead_letter_entries"] = len(kept)
    tally["requests"] = len(workload.uploads)
    return dict(tally), violations


def _stored(orthanc: Orthanc, study_uid: str) -> set[str]:
    try:
        found = orthanc.get_json(f"/dicom-web/studies/{study_uid}/instances")
    except Exception:
        return set()
    return {item["00080018"]["Value"][0] for item in found}  # type: ignore[union-attr]


def _secrets_in(text: str, where: str) -> list[str]:
    secrets = (PASSWORD, ADMIN, base64.b64encode(f"chaos:{PASSWORD}".encode()).decode())
    return [f"{where} holds {secret[:6]}..." for secret in secrets + PATIENT if secret in text]
