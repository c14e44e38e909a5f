"""``dicomweb-proxy prefetch`` through a proxy in front of Orthanc (SPEC section 1)."""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp

from harness.dicomgen import Study
from proxy import prefetch
from proxy.progress import Progress, Reporter, eta, progress_bar
from tests.fake_upstream import FakeUpstream
from tests.support import ProxyThread, eventually_async

ROOT = Path(__file__).resolve().parent.parent


def instance_paths(study: Study) -> list[str]:
    return [
        f"/dicom-web/studies/{study.uid}/series/{series}/instances/{sop}"
        for series, sop, _ in study.instances
    ]


async def test_prefetch_reads_metadata_then_every_instance_once(
    relay: FakeUpstream, study: Study, start_proxy: Callable[..., ProxyThread]
) -> None:
    proxy = start_proxy(relay.dicomweb)
    output = io.StringIO()
    options = prefetch.Options(proxy.dicomweb, studies=(study.uid,), concurrency=3)
    progress = await prefetch.run(options, Reporter(output, tty=False))

    assert progress.failures == []
    assert (progress.studies_done, progress.studies_total) == (1, 1)
    assert progress.instances_done == progress.instances_total == 6
    assert relay.paths[f"/dicom-web/studies/{study.uid}/metadata"] == 1
    instances = instance_paths(study)
    for path in instances:
        assert relay.paths[path] == 1
    # Every byte the upstream sent for the instances reached the prefetcher.
    sent = [len(r.answer.data) for r in relay.received if r.answer and r.path in instances]
    assert progress.bytes == sum(sent)
    assert progress.bytes > sum(len(data) for _, _, data in study.instances)
    assert output.getvalue().startswith(f"study {study.uid}: 6 instances, ")
    # The study is now served from the cache: metadata and every instance are hits.
    metadata = f"/dicom-web/studies/{study.uid}/metadata"
    async with aiohttp.ClientSession() as session:
        json = {"Accept": "application/dicom+json"}
        await eventually_hit(session, proxy.url + metadata, json)
        for path in instance_paths(study):
            accept = {"Accept": prefetch.DEFAULT_ACCEPT}
            await eventually_hit(session, proxy.url + path, accept)
    assert relay.paths[f"/dicom-web/studies/{study.uid}/metadata"] == 1


async def eventually_hit(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> None:
    """A fill is committed just after its last byte went out: allow it that moment."""

    async def hit() -> bool:
        async with session.get(url, headers=headers) as response:
            await response.read()
            return response.headers.get("X-Cache") == "HIT"

    await eventually_async(hit, timeout=1, interval=0.02, message=f"{url} is not a hit")


async def test_prefetch_command_with_a_query_and_a_failure(
    relay: FakeUpstream, study: Study, start_proxy: Callable[..., ProxyThread]
) -> None:
    proxy = start_proxy(relay.dicomweb)
    command = [sys.executable, "-m", "proxy", "prefetch", "--proxy-url", proxy.dicomweb]
    found = await run_command(*command, "--query", f"StudyInstanceUID={study.uid}")
    assert found[0] == 0, found
    assert found[1].startswith("prefetched 1 studies, 6 instances, ")
    assert found[1].rstrip().endswith("0 failed")
    assert f"study {study.uid}: 6 instances" in found[2]
    # The prefetch's search, and the cache's instance count for the metadata entry.
    assert relay.paths["/dicom-web/studies"] == 2
    for path in instance_paths(study):
        assert relay.paths[path] == 1

    missing = "1.2.826.0.1.3680043.10.999.1"
    status, out, _ = await run_command(*command, "--study", missing, "--concurrency", "2")
    assert status == 1
    assert "0 instances" in out and "1 failed" in out
    assert f"study {missing} metadata: HTTP 404" in out


async def test_prefetch_rejects_bad_options() -> None:
    base = [sys.executable, "-m", "proxy", "prefetch"]
    status, _, err = await run_command(*base, "--proxy-url", "ftp://x", "--study", "1.2")
    assert status == 2 and "--proxy-url" in err
    status, _, err = await run_command(*base, "--proxy-url", "http://127.0.0.1:1", "--query", "")
    # an unreachable proxy is a failure, not a crash
    assert status == 1 and "Traceback" not in err


async def run_command(*argv: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    return int(process.returncode or 0), out.decode(), err.decode()


def test_progress_bar_and_eta() -> None:
    progress = Progress(studies_total=2, studies_done=1, metadata_pending=1)
    progress.instances_total, progress.instances_done, progress.bytes = 10, 5, 5 * 1024**2
    bar = progress_bar(progress, width=10)
    assert bar.startswith("[#####.....] 1/2 studies  5/10 instances  5.0 MiB  ")
    assert bar.endswith("ETA ?")  # a study's instance list is still unknown
    progress.metadata_pending = 0
    assert eta(progress) != "?"


def test_terminal_reporter_redraws_one_line() -> None:
    stream = io.StringIO()
    reporter = Reporter(stream, tty=True)
    progress = Progress(studies_total=1, instances_total=2, instances_done=1)
    reporter.update(progress)
    reporter.finish(progress)
    assert stream.getvalue().startswith("\r\x1b[K[")
    assert stream.getvalue().endswith("\n")
    assert "1/2 instances" in stream.getvalue()
