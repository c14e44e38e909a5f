"""The disk cache against a real Orthanc behind the fake upstream, which counts what
reaches the upstream (SPEC section 3), and against the fake alone for cut bodies."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from harness.dicomgen import Study, make_instance, make_study
from harness.net import free_port, wait_port
from harness.orthanc import Orthanc
from proxy.cache.store import Store
from tests.fake_upstream import DICOM_JSON, Answer, FakeUpstream, multipart_answer
from tests.support import FakeClock, eventually_async, serve_process

Start = Callable[..., Any]


def instance_path(study: Study, index: int = 0) -> str:
    series_uid, sop_uid, _ = study.instances[index]
    return f"/dicom-web/studies/{study.uid}/series/{series_uid}/instances/{sop_uid}"


async def test_miss_then_hit_byte_identical_one_upstream_request(
    relay: FakeUpstream, proxy_to: Start, study: Study
) -> None:
    client = await proxy_to(relay.dicomweb)
    path = instance_path(study)
    first = await client.get(path)
    body = await first.read()
    await settle(client)
    second = await client.get(path)
    assert first.headers["X-Cache"] == "MISS"
    assert second.headers["X-Cache"] == "HIT"
    assert await second.read() == body
    assert second.headers["Content-Type"] == first.headers["Content-Type"]
    assert relay.count(path) == 1
    assert study.instances[0][2][132:] in body or len(body) > 1000


async def test_twenty_concurrent_misses_make_one_upstream_request(
    relay: FakeUpstream, proxy_to: Start, study: Study
) -> None:
    client = await proxy_to(relay.dicomweb)
    path = instance_path(study, 1)

    async def fetch() -> bytes:
        async with client.get(path) as response:
            assert response.status == 200
            return await response.read()

    bodies = await asyncio.gather(*(fetch() for _ in range(20)))
    assert len(set(bodies)) == 1
    assert relay.count(path) == 1


async def test_etag_and_if_none_match(relay: FakeUpstream, proxy_to: Start, study: Study) -> None:
    client = await proxy_to(relay.dicomweb)
    path = instance_path(study) + "/metadata"
    await (await client.get(path)).read()
    await settle(client)
    hit = await client.get(path)
    etag = hit.headers["ETag"]
    again = await client.get(path, headers={"If-None-Match": etag})
    assert again.status == 304
    assert again.headers["ETag"] == etag
    assert again.headers["X-Cache"] == "HIT"
    other = await client.get(path, headers={"If-None-Match": '"other"'})
    assert other.status == 200


async def test_accept_and_transfer_syntax_make_separate_entries(
    relay: FakeUpstream, proxy_to: Start, study: Study
) -> None:
    client = await proxy_to(relay.dicomweb)
    path = instance_path(study)
    plain = 'multipart/related; type="application/dicom"'
    explicit = plain + "; transfer-syntax=1.2.840.10008.1.2.1"
    for accept in (plain, explicit, plain, explicit):
        await (await client.get(path, headers={"Accept": accept})).read()
        await settle(client)
    assert relay.count(path) == 2
    hit = await client.get(path, headers={"Accept": explicit})
    assert hit.headers["X-Cache"] == "HIT"
    assert "Accept" in hit.headers["Vary"]


async def test_no_store_and_no_cache_bypass(
    relay: FakeUpstream, proxy_to: Start, study: Study
) -> None:
    client = await proxy_to(relay.dicomweb)
    path = instance_path(study)
    await (await client.get(path)).read()
    await settle(client)
    no_store = await client.get(path, headers={"Cache-Control": "no-store"})
    assert no_store.headers["X-Cache"] == "BYPASS"
    no_cache = await client.get(path, headers={"Cache-Control": "no-cache"})
    assert no_cache.headers["X-Cache"] == "BYPASS"
    await no_cache.read()
    await settle(client)
    assert relay.count(path) == 3
    assert (await client.get(path)).headers["X-Cache"] == "HIT"


async def test_persists_across_restart(relay: FakeUpstream, proxy_to: Start, study: Study) -> None:
    first = await proxy_to(relay.dicomweb, data="shared")
    path = instance_path(study)
    body = await (await first.get(path)).read()
    await settle(first)
    await first.close()
    second = await proxy_to(relay.dicomweb, data="shared")
    hit = await second.get(path)
    assert hit.headers["X-Cache"] == "HIT"
    assert await hit.read() == body
    assert relay.count(path) == 1


async def test_metadata_revalidation_picks_up_a_new_instance(
    relay: FakeUpstream, proxy_to: Start, orthanc: Orthanc, study: Study
) -> None:
    clock = FakeClock()
    client = await proxy_to(relay.dicomweb, clock=clock)  # --metadata-ttl 60 s
    path = f"/dicom-web/studies/{study.uid}/metadata"
    assert len(await (await client.get(path)).json()) == 6
    await settle(client)
    clock.advance(59)
    fresh = await client.get(path)
    assert fresh.headers["X-Cache"] == "HIT"
    assert relay.count("/dicom-web/studies?") == 1  # the count asked by the fill
    clock.advance(2)
    unchanged = await client.get(path)
    assert unchanged.headers["X-Cache"] == "REVALIDATED"
    assert relay.count(path) == 1
    series_uid = next(iter(study.series))
    orthanc.upload(make_instance(study.uid, series_uid, 99, rows=16, columns=16))
    clock.advance(61)
    changed = await client.get(path)
    assert changed.headers["X-Cache"] == "MISS"
    assert len(await changed.json()) == 7
    await settle(client)
    assert relay.count(path) == 2


async def test_study_becomes_final_and_stops_revalidating(
    relay: FakeUpstream, proxy_to: Start, study: Study
) -> None:
    clock = FakeClock()
    client = await proxy_to(relay.dicomweb, clock=clock)  # --metadata-ttl 60 s, a day final
    path = f"/dicom-web/studies/{study.uid}/metadata"
    await (await client.get(path)).read()
    await settle(client)
    clock.advance(61)
    assert (await client.get(path)).headers["X-Cache"] == "REVALIDATED"  # not final yet
    clock.advance(86400)
    assert (await client.get(path)).headers["X-Cache"] == "REVALIDATED"  # now final
    counts_before = relay.count("/dicom-web/studies?")
    for _ in range(3):
        clock.advance(61)
        assert (await client.get(path)).headers["X-Cache"] == "HIT"
    assert relay.count("/dicom-web/studies?") == counts_before


async def test_stow_through_the_proxy_invalidates_study_entries(
    relay: FakeUpstream, proxy_to: Start, study: Study
) -> None:
    client = await proxy_to(relay.dicomweb)
    path = f"/dicom-web/studies/{study.uid}/metadata"
    await (await client.get(path)).read()
    await settle(client)
    assert (await client.get(path)).headers["X-Cache"] == "HIT"
    series_uid = next(iter(study.series))
    extra = make_instance(study.uid, series_uid, 50, rows=16, columns=16)
    boundary = "stow-boundary"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + extra
        + f"\r\n--{boundary}--\r\n".encode()
    )
    stored = await client.post(
        "/dicom-web/studies",
        data=body,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
    )
    assert stored.status == 200
    after = await client.get(path)
    assert after.headers["X-Cache"] == "MISS"
    assert len(await after.json()) == 7
    assert relay.count(path) == 2


async def test_offline_serving_when_the_upstream_is_down(
    relay: FakeUpstream, proxy_to: Start, study: Study
) -> None:
    clock = FakeClock()
    client = await proxy_to(relay.dicomweb, clock=clock)  # --metadata-ttl 60 s, stale 1 h
    cached = instance_path(study)
    body = await (await client.get(cached)).read()
    await settle(client)
    metadata = f"/dicom-web/studies/{study.uid}/metadata"
    await (await client.get(metadata)).read()
    await settle(client)
    relay.route("*", "/{path:.*}", Answer(503, "down"))
    clock.advance(61)
    hit = await client.get(cached)
    assert hit.headers["X-Cache"] == "HIT" and await hit.read() == body
    stale = await client.get(metadata)
    assert stale.status == 200
    assert stale.headers["X-Cache"] == "STALE"
    assert stale.headers["Warning"].startswith("110 ")
    assert len(await stale.json()) == 6
    uncached = await client.get(instance_path(study, 2))
    assert uncached.status == 503  # the fake's own 503 passes through unchanged
    clock.advance(3600)  # past --stale-if-error: the study entry is not served any more
    assert (await client.get(metadata)).status == 503
    hit = await client.get(cached)
    assert hit.headers["X-Cache"] == "HIT" and await hit.read() == body


async def test_uncached_requests_get_problem_documents_when_upstream_unreachable(
    relay: FakeUpstream, proxy_to: Start, study: Study
) -> None:
    client = await proxy_to(relay.dicomweb)
    cached = instance_path(study)
    await (await client.get(cached)).read()
    await settle(client)
    relay.stop()
    assert (await client.get(cached)).headers["X-Cache"] == "HIT"
    missing = await client.get(instance_path(study, 1))
    assert missing.status == 502
    assert missing.headers["Content-Type"].startswith("application/problem+json")


async def test_size_bound_respected_over_three_times_the_limit(
    relay: FakeUpstream, proxy_to: Start, orthanc: Orthanc, tmp_path: Path
) -> None:
    limit = 2 * 1024 * 1024
    client = await proxy_to(relay.dicomweb, cache_size=limit)
    big = make_study(1, 12, rows=256, columns=256)  # ~128 KiB each, ~1.5 MiB in all
    for _, _, data in big.instances:
        orthanc.upload(data)
    for _ in range(4):  # 4 passes over ~1.5 MiB of distinct keys ~ 3x the limit
        for index in range(len(big.instances)):
            path = instance_path(big, index)
            for accept in ("application/dicom", 'multipart/related; type="application/dicom"'):
                await (await client.get(path, headers={"Accept": accept})).read()
    store = client.server.app[cache_key()].store
    assert store.stats()["bytes"] <= limit
    assert store.stats()["entries"] > 0


async def settle(client: TestClient[Any, Any]) -> None:
    """Wait until every fill has been committed or discarded."""
    cache = client.server.app[cache_key()]
    await eventually_async(
        lambda: not cache._fills, timeout=5, interval=0.02, message="fills did not finish"
    )


def cache_key() -> Any:
    from proxy.state import CACHE

    return CACHE


async def test_purge_api_requires_the_admin_token_and_purges(
    relay: FakeUpstream, proxy_to: Start, study: Study
) -> None:
    client = await proxy_to(relay.dicomweb, admin_token="s3cret-admin")
    path = instance_path(study)
    await (await client.get(path)).read()
    await settle(client)
    assert (await client.get("/admin/cache")).status == 401
    wrong = await client.get("/admin/cache", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401
    auth = {"Authorization": "Bearer s3cret-admin"}
    stats = await (await client.get("/admin/cache", headers=auth)).json()
    assert stats["entries"] >= 1 and stats["bytes"] > 0
    assert "s3cret" not in str(stats)
    purged = await client.delete(f"/admin/cache/studies/{study.uid}", headers=auth)
    assert (await purged.json())["removed"] >= 1
    refetched = await client.get(path)
    assert refetched.headers["X-Cache"] == "MISS"
    await refetched.read()
    await settle(client)
    await (await client.delete("/admin/cache", headers=auth)).read()
    assert (await client.get(path)).headers["X-Cache"] == "MISS"
    assert relay.count(path) == 3


async def test_qido_cached_only_with_qido_ttl(
    relay: FakeUpstream, proxy_to: Start, study: Study
) -> None:
    path = f"/dicom-web/studies?StudyInstanceUID={study.uid}"
    uncached = await proxy_to(relay.dicomweb, data="a")
    for _ in range(2):
        response = await uncached.get(path)
        assert "X-Cache" not in response.headers
    clock = FakeClock()
    cached = await proxy_to(relay.dicomweb, data="b", clock=clock, qido_ttl=60)
    for _ in range(2):
        await (await cached.get(path)).read()
        await settle(cached)
        await settle(cached)
    clock.advance(59)
    assert (await cached.get(path)).headers["X-Cache"] == "HIT"
    assert relay.count(path) == 3
    clock.advance(2)
    assert (await cached.get(path)).headers["X-Cache"] == "MISS"
    assert relay.count(path) == 4


async def test_no_cache_option_forwards_everything(
    relay: FakeUpstream, proxy_to: Start, study: Study, tmp_path: Path
) -> None:
    client = await proxy_to(relay.dicomweb, no_cache=True)
    path = instance_path(study)
    for _ in range(3):
        response = await client.get(path)
        assert "X-Cache" not in response.headers
        await response.read()
    assert relay.count(path) == 3


INSTANCE = "/dicom-web/studies/1.2.3/series/4.5/instances/6.7"
WHOLE = multipart_answer(b"D" * 200_000)  # what the archive sends for INSTANCE
HALF = len(WHOLE.data) // 2
JSON = {"Content-Type": "application/json; charset=utf-8"}
CUT = {
    "short-length": replace(WHOLE, drop_after=HALF),
    "short-chunked": replace(WHOLE, framing="chunked", drop_after=HALF),
    "close-cut": replace(WHOLE, framing="close", drop_after=HALF),
}


@pytest.mark.parametrize("mode", list(CUT))
async def test_truncated_bodies_are_never_cached(
    fake: FakeUpstream, proxy_to: Start, mode: str
) -> None:
    fake.route("GET", INSTANCE, WHOLE, first=[CUT[mode]])
    client = await proxy_to(fake.dicomweb)
    response = await client.get(INSTANCE)
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()
    again = await client.get(INSTANCE)
    assert again.headers["X-Cache"] == "MISS"
    assert await again.read() == WHOLE.data
    await settle(client)
    assert fake.count() == 2
    assert (await client.get(INSTANCE)).headers["X-Cache"] == "HIT"
    tmp = client.server.app[cache_key()].store.tmp
    assert list(tmp.iterdir()) == []


async def test_close_delimited_multipart_with_closing_boundary_is_cached(
    fake: FakeUpstream, proxy_to: Start
) -> None:
    fake.route("GET", INSTANCE, replace(WHOLE, framing="close"))
    client = await proxy_to(fake.dicomweb)
    assert await (await client.get(INSTANCE)).read() == WHOLE.data
    await settle(client)
    assert (await client.get(INSTANCE)).headers["X-Cache"] == "HIT"
    assert fake.count() == 1


async def test_client_disconnect_does_not_abort_the_fill(
    fake: FakeUpstream, proxy_to: Start
) -> None:
    fake.route("GET", INSTANCE, WHOLE)
    client = await proxy_to(fake.dicomweb)
    response = await client.get(INSTANCE)
    await response.content.read(10)
    response.close()
    await settle(client)
    assert (await client.get(INSTANCE)).headers["X-Cache"] == "HIT"
    assert fake.count() == 1


async def test_kill_9_mid_fill_leaves_no_entry_and_no_temp_file(
    fake: FakeUpstream, tmp_path: Path
) -> None:
    port, data_dir = free_port(), tmp_path / "data"
    stall = replace(WHOLE, drop_after=HALF, hang=True)  # half the body, then nothing
    fake.route("GET", INSTANCE, WHOLE, first=[stall])
    proxy = serve_process(fake.dicomweb, data_dir, port)
    try:
        await wait_port(port)
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {INSTANCE} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        tmp = data_dir / "cache" / "tmp"
        await eventually_async(
            lambda: any(p.stat().st_size > 0 for p in tmp.glob("*.part")),
            interval=0.05,
            message="the fill should be in progress",
        )
        proxy.send_signal(signal.SIGKILL)
        proxy.wait(10)
        writer.close()
        proxy = serve_process(fake.dicomweb, data_dir, port)
        await wait_port(port)
        assert list(tmp.glob("*.part")) == []
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}{INSTANCE}") as response:
                assert response.headers["X-Cache"] == "MISS"
                assert await response.read() == WHOLE.data
            async with session.get(f"http://127.0.0.1:{port}{INSTANCE}") as response:
                assert response.headers["X-Cache"] == "HIT"
    finally:
        proxy.kill()
        proxy.wait(10)


async def test_cache_command_stats_and_purge(
    relay: FakeUpstream, proxy_to: Start, study: Study, tmp_path: Path
) -> None:
    client = await proxy_to(relay.dicomweb, data="cli")
    for index in range(2):
        await (await client.get(instance_path(study, index))).read()
        await settle(client)
    await client.close()
    base = [sys.executable, "-m", "proxy", "cache"]
    data = ["--data-dir", str(tmp_path / "cli")]

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *argv, *data], capture_output=True, text=True, timeout=60)

    stats = json.loads(run("stats").stdout)
    assert stats["entries"] == 2 and stats["bytes"] > 0
    assert run("purge", "--study", "not-a-uid").returncode == 2
    purged = run("purge", "--study", study.uid)
    assert purged.returncode == 0 and "removed 2 entries" in purged.stdout
    assert json.loads(run("stats").stdout)["entries"] == 0
    assert run("purge").stdout.strip() == "removed 0 entries"


async def test_study_entries_are_kept_when_the_count_answer_arrives_in_pieces(
    fake: FakeUpstream, proxy_to: Start
) -> None:
    """A slow link delivers a QIDO answer in several reads; all of it must be read."""
    study = "1.2.3.77"
    metadata = json.dumps([{"0020000D": {"vr": "UI", "Value": [study]}}])
    fake.route("GET", f"/dicom-web/studies/{study}/metadata", Answer(body=metadata, headers=JSON))
    count = json.dumps([{"00201208": {"vr": "IS", "Value": [3]}}])
    pieces = Answer(body=count, headers=DICOM_JSON, framing="chunked", pieces=2, pause=0.05)
    fake.route("GET", "/dicom-web/studies", pieces)
    client = await proxy_to(fake.dicomweb)
    path = f"/dicom-web/studies/{study}/metadata"
    assert (await client.get(path)).headers["X-Cache"] == "MISS"
    await settle(client)
    assert (await client.get(path)).headers["X-Cache"] == "HIT"


async def test_one_stored_body_rewritten_for_each_host_name(
    relay: FakeUpstream, proxy_to: Start, study: Study
) -> None:
    """Stored as the upstream sent it, rewritten per request: no host leaks to another."""
    client = await proxy_to(relay.dicomweb)
    path = f"/dicom-web/studies/{study.uid}/metadata"
    await (await client.get(path)).read()
    await settle(client)
    for _ in range(2):  # the second round comes from the rewritten bodies kept in memory
        for host in ("viewer-a.example:8080", "viewer-b.example"):
            hit = await client.get(path, headers={"Host": host})
            assert hit.headers["X-Cache"] == "HIT"
            text = await hit.text()
            assert f"http://{host}/dicom-web/studies/{study.uid}" in text
            other = "viewer-b.example" if host.startswith("viewer-a") else "viewer-a.example"
            assert other not in text and str(relay.port) not in text
    assert relay.count(path) == 1


async def test_hit_heads_are_kept_but_each_request_gets_its_own_id_and_coding(
    relay: FakeUpstream, proxy_to: Start, study: Study
) -> None:
    """Hit heads are built once per entry (proxy.cache.heads); what belongs to the
    request (its id, whether it accepts gzip, its validators) still follows it."""
    client = await proxy_to(relay.dicomweb)
    metadata, instance = f"/dicom-web/studies/{study.uid}/metadata", instance_path(study)
    for path in (metadata, instance):
        await (await client.get(path)).read()
    await settle(client)
    for number, coding in enumerate(["gzip", "identity", "gzip"]):
        hit = await client.get(
            metadata,
            headers={"Accept-Encoding": coding, "X-Request-ID": f"m{number}"},
            auto_decompress=False,
        )
        body = await hit.read()
        assert (hit.headers["X-Cache"], hit.headers["X-Request-ID"]) == ("HIT", f"m{number}")
        assert hit.headers.get("Content-Encoding") == ("gzip" if coding == "gzip" else None)
        assert body.startswith(b"\x1f\x8b") == (coding == "gzip")
    etags = set()
    for number in range(2):
        hit = await client.get(instance, headers={"X-Request-ID": f"i{number}"})
        await hit.read()
        assert (hit.headers["X-Cache"], hit.headers["X-Request-ID"]) == ("HIT", f"i{number}")
        etags.add(hit.headers["ETag"])
    [etag] = etags
    again = await client.get(instance, headers={"If-None-Match": etag, "X-Request-ID": "n1"})
    assert (again.status, again.headers["X-Request-ID"], again.headers["ETag"]) == (304, "n1", etag)


@pytest.mark.parametrize("scope", ["all", "study"])
async def test_a_purge_runs_off_the_event_loop_and_hides_its_entries_at_once(
    relay: FakeUpstream,
    proxy_to: Start,
    study: Study,
    monkeypatch: pytest.MonkeyPatch,
    scope: str,
) -> None:
    """Deleting a large cache takes seconds: meanwhile the proxy keeps answering, and no
    entry the purge removes is served (SPEC section 3, Purge)."""
    client = await proxy_to(relay.dicomweb, admin_token="s3cret-admin")
    path = instance_path(study)
    await (await client.get(path)).read()
    await settle(client)
    assert (await client.get(path)).headers["X-Cache"] == "HIT"
    release, threads = threading.Event(), []
    real = Store.delete

    def slow_delete(self: Store, tags: list[str] | None = None) -> int:
        threads.append(threading.current_thread())
        release.wait(30)
        return real(self, tags)

    monkeypatch.setattr(Store, "delete", slow_delete)
    auth = {"Authorization": "Bearer s3cret-admin"}
    target = "/admin/cache" if scope == "all" else f"/admin/cache/studies/{study.uid}"
    purge = asyncio.ensure_future(client.delete(target, headers=auth))
    await eventually_async(lambda: threads, message="the purge did not reach its thread")
    # The purge is now inside its thread, blocked.
    assert threads[0] is not threading.main_thread()
    assert (await client.get("/healthz")).status == 200  # the loop is free
    during = await client.get(path)
    assert during.headers["X-Cache"] == "MISS"  # not served from the entry being purged
    await during.read()
    release.set()
    assert (await (await purge).json())["removed"] >= 1
    assert relay.count(path) == 2
