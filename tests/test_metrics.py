"""Metrics move as they should after a known sequence of requests (SPEC section 6)."""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from harness.dicomgen import Study
from harness.net import free_port, wait_port
from harness.orthanc import Orthanc
from proxy import logs, metrics, metrics_endpoint, metrics_multiprocess, state
from proxy.state import EXPRESS
from tests.support import ProxyThread, eventually, serve_process


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = fetch(url)
    assert status == 200
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_known_sequence_moves_request_and_upstream_metrics(
    proxy: ProxyThread, study: Study
) -> None:
    series_uid, sop_uid, data = study.instances[0]
    base = proxy.dicomweb
    assert fetch(f"{base}/studies?StudyInstanceUID={study.uid}")[0] == 200
    assert fetch(f"{base}/studies/{study.uid}/metadata")[0] == 200
    accept = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
    instance_url = f"{base}/studies/{study.uid}/series/{series_uid}/instances/{sop_uid}"
    assert fetch(instance_url, accept)[0] == 200
    assert fetch(f"{base}/studies/1.2.3.999/metadata")[0] == 404
    assert fetch(f"{proxy.url}/healthz")[0] == 200

    # The instance-count queries of the metadata misses finish in the background,
    # possibly after their clients got an answer: wait for them before counting.
    def counted() -> dict | None:
        samples = scrape(proxy.url + "/metrics")
        upstream = value(samples, "dicomweb_proxy_upstream_duration_seconds_count")
        return samples if upstream >= 6 else None

    samples = eventually(
        counted, timeout=5, interval=0.05, message="the upstream requests were not all counted"
    )
    requests = "dicomweb_proxy_requests_total"
    assert value(samples, requests, transaction="qido", method="GET", status="200") == 1
    assert value(samples, requests, transaction="wado_metadata", method="GET", status="200") == 1
    assert value(samples, requests, transaction="wado_metadata", method="GET", status="404") == 1
    assert value(samples, requests, transaction="wado", method="GET", status="200") == 1
    assert value(samples, requests, transaction="other", method="GET", status="200") == 1
    durations = "dicomweb_proxy_request_duration_seconds_count"
    assert value(samples, durations, transaction="wado_metadata") == 2
    assert value(samples, durations, transaction="qido") == 1
    # Four client requests reached the upstream, and each study-level metadata miss
    # also asked for the study's instance count (the cache's revalidation baseline);
    # /healthz did not.
    assert value(samples, "dicomweb_proxy_upstream_requests_total", status="200") == 5
    assert value(samples, "dicomweb_proxy_upstream_requests_total", status="404") == 1
    assert value(samples, "dicomweb_proxy_upstream_duration_seconds_count") == 6
    assert value(samples, "dicomweb_proxy_upstream_duration_seconds_sum") > 0
    # Everything came from the upstream, at least the instance's own bytes.
    served = "dicomweb_proxy_cache_served_bytes_total"
    assert value(samples, served, source="upstream") > len(data)
    assert value(samples, served, source="cache") == 0
    # Families a scrape must always show, at zero before anything happened.
    assert (("dicomweb_proxy_cache_requests_total", (("result", "hit"),))) in samples
    assert (("dicomweb_proxy_stow_batches_total", (("outcome", "split"),))) in samples
    assert (("dicomweb_proxy_stow_instances_total", (("outcome", "dead_lettered"),))) in samples
    assert ("dicomweb_proxy_dead_letter_entries", ()) in samples


def test_unreachable_upstream_counts_as_error(
    start_proxy: Callable[..., ProxyThread],
) -> None:
    proxy = start_proxy(f"http://127.0.0.1:{free_port()}/dicom-web")
    assert fetch(proxy.dicomweb + "/studies")[0] == 502
    samples = scrape(proxy.url + "/metrics")
    assert value(samples, "dicomweb_proxy_upstream_requests_total", status="error") == 1
    labels = {"transaction": "qido", "method": "GET", "status": "502"}
    assert value(samples, "dicomweb_proxy_requests_total", **labels) == 1


def test_metrics_listen_serves_only_metrics(
    orthanc_url: str, start_proxy: Callable[..., ProxyThread]
) -> None:
    port = free_port()
    proxy = start_proxy(orthanc_url, metrics_listen=f"127.0.0.1:{port}")
    assert fetch(proxy.dicomweb + "/studies?limit=1")[0] == 200
    samples = scrape(f"http://127.0.0.1:{port}/metrics")
    labels = {"transaction": "qido", "method": "GET", "status": "200"}
    assert value(samples, "dicomweb_proxy_requests_total", **labels) == 1
    assert fetch(proxy.url + "/metrics")[0] == 404
    assert fetch(f"http://127.0.0.1:{port}/dicom-web/studies")[0] == 404


@pytest.fixture
def orthanc_url(orthanc) -> str:  # type: ignore[no-untyped-def]
    return str(orthanc.dicomweb)


# -- recording helpers, through the access-log middleware -----------------------------


def _app_answering(headers: dict[str, str], body: bytes) -> web.Application:
    app = web.Application(middlewares=[logs.access_middleware], handler_args=logs.handler_args())
    app[state.METRICS] = metrics.Metrics()
    logs.setup(app)

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, headers=headers)

    app.router.add_get("/x", handler)
    return app


@pytest.mark.parametrize(
    ("x_cache", "result"),
    [("HIT", "hit"), ("MISS", "miss"), ("STALE", "stale"), ("BYPASS", "bypass")],
)
async def test_x_cache_header_counts_cache_result(
    aiohttp_client: Callable[..., TestClient], x_cache: str, result: str
) -> None:
    app = _app_answering({"X-Cache": x_cache}, b"abc")
    client = await aiohttp_client(app)
    response = await client.get("/x")
    assert response.status == 200
    found = app[state.METRICS]
    assert found.value("dicomweb_proxy_cache_requests_total", result=result) == 1
    assert found.total("dicomweb_proxy_cache_requests_total") == 1


def test_recording_functions_ignore_an_app_without_metrics() -> None:
    app = web.Application()
    metrics.cache_result(app, "hit")
    metrics.stow_batch(app, "split")
    metrics.stow_instances(app, "dead_lettered", 3)
    metrics.dead_letter_entries(app, 2)  # nothing raised


class _CacheFigures:
    def stats(self) -> dict[str, int]:
        return {"entries": 7, "bytes": 4096, "hits": 1, "misses": 2}


def test_stow_and_cache_gauges() -> None:
    app = web.Application()
    found = app[state.METRICS] = metrics.Metrics()
    app[state.CACHE] = _CacheFigures()  # type: ignore[assignment]
    metrics.stow_batch(app, "split")
    metrics.stow_instances(app, "stored", 49)
    metrics.dead_letter_entries(app, 2)
    metrics_endpoint.refresh_cache_gauges(app)
    assert found.value("dicomweb_proxy_stow_batches_total", outcome="split") == 1
    assert found.value("dicomweb_proxy_stow_instances_total", outcome="stored") == 49
    assert found.value("dicomweb_proxy_dead_letter_entries") == 2
    assert found.value("dicomweb_proxy_cache_entries") == 7
    assert found.value("dicomweb_proxy_cache_bytes") == 4096


def test_each_cache_result_is_counted_once_alike_in_metrics_and_admin_stats(
    start_proxy: Callable[..., ProxyThread], orthanc: Orthanc, study: Study
) -> None:
    """One count per client request, wherever it was answered (aiohttp, the express
    lane): /admin/cache reads the same counts /metrics shows."""
    proxy = start_proxy(orthanc.dicomweb, admin_token="stats-token")
    series_uid, sop_uid, _ = study.instances[0]
    url = f"{proxy.dicomweb}/studies/{study.uid}/series/{series_uid}/instances/{sop_uid}"
    accept = {"Accept": 'multipart/related; type="application/dicom"'}
    seen: list[str] = []
    with requests.Session() as session:  # keep-alive, as clients send: the lane answers too
        for _ in range(8):
            response = session.get(url, headers=accept, timeout=10)
            assert response.status_code == 200
            seen.append(response.headers["X-Cache"])
        etag = response.headers["ETag"]
        unchanged = session.get(url, headers={**accept, "If-None-Match": etag}, timeout=10)
        assert unchanged.status_code == 304
        seen.append(unchanged.headers["X-Cache"])
        beyond = session.get(url, headers={**accept, "Range": "bytes=99999999-"}, timeout=10)
        assert beyond.status_code == 416 and "X-Cache" not in beyond.headers  # no result
    assert proxy.app is not None and proxy.app[EXPRESS].count >= 1
    found = proxy.app[state.METRICS]
    name = "dicomweb_proxy_cache_requests_total"
    eventually(  # an answer is counted once its last byte went out
        lambda: found.total(name) == len(seen), message="not every result was counted"
    )
    assert found.value(name, result="hit") == seen.count("HIT") >= 6
    assert found.value(name, result="miss") == seen.count("MISS") >= 1
    admin = {"Authorization": "Bearer stats-token"}
    stats = requests.get(proxy.url + "/admin/cache", headers=admin, timeout=10).json()
    assert (stats["hits"], stats["misses"]) == (seen.count("HIT"), seen.count("MISS"))


# -- multiprocess mode ----------------------------------------------------------------


def _worker(directory: str, requests: int, cache_bytes: int) -> None:
    """One worker process: switch to multiprocess values, record, exit."""
    found = metrics.Metrics(Path(directory))
    for _ in range(requests):
        metrics.request_done(found, "wado", "GET", 200, 0.002)
    found.cache_bytes.set(cache_bytes)


def test_workers_share_metrics_through_the_multiprocess_dir(tmp_path: Path) -> None:
    directory = tmp_path / "metrics"
    directory.mkdir()
    (directory / "counter_99999.db").write_bytes(b"stale from a previous run")
    metrics_multiprocess.reset_multiprocess_dir(directory)
    assert list(directory.iterdir()) == []

    for count, size in ((2, 100), (3, 100)):
        _run_worker(_worker, str(directory), count, size)

    merged = metrics_multiprocess.read_multiprocess(directory)
    labels = {"transaction": "wado", "method": "GET", "status": "200"}
    assert merged.get_sample_value("dicomweb_proxy_requests_total", labels) == 5
    histogram = "dicomweb_proxy_request_duration_seconds_count"
    assert merged.get_sample_value(histogram, {"transaction": "wado"}) == 5
    assert merged.get_sample_value("dicomweb_proxy_cache_bytes", {}) == 100


def _hits_worker(directory: str, hits: int, everyone: int) -> None:
    """A worker counting ``hits``: its own count, and a scrape's sum over workers."""
    found = metrics.Metrics(Path(directory))
    for _ in range(hits):
        metrics.cache_result(found, "hit")
    own = found.own_cache_results()["hit"]
    summed = found.value("dicomweb_proxy_cache_requests_total", result="hit")
    sys.exit(0 if (own, summed) == (hits, everyone) else 1)


def test_a_workers_cache_stats_count_its_own_results(tmp_path: Path) -> None:
    """With --workers, /metrics sums every worker's results; Cache.stats() (the status
    page, /admin/cache) reports the process's own."""
    directory = tmp_path / "metrics"
    metrics_multiprocess.reset_multiprocess_dir(directory)
    for hits, everyone in ((2, 2), (3, 5)):
        _run_worker(_hits_worker, str(directory), hits, everyone)


def _run_worker(target: Callable[..., None], *args: object) -> None:
    """``target(*args)`` in a worker process of its own (spawned, as --workers does)."""
    process = multiprocessing.get_context("spawn").Process(target=target, args=args)
    process.start()
    process.join(60)
    assert process.exitcode == 0


def test_multiprocess_dir_only_with_several_workers(tmp_path: Path) -> None:
    from tests.support import make_settings

    one = make_settings("http://127.0.0.1:1/dicom-web", tmp_path)
    assert metrics_multiprocess.multiprocess_dir(one) is None
    several = make_settings("http://127.0.0.1:1/dicom-web", tmp_path, workers=4)
    assert metrics_multiprocess.multiprocess_dir(several) == tmp_path / "metrics"


async def test_two_real_workers_report_the_sum_of_their_requests(
    orthanc: Orthanc, study: Study, tmp_path: Path
) -> None:
    """``--workers 2``: whichever worker answers the scrape, it counts both workers'
    requests and cache results (prometheus-client multiprocess mode)."""
    port = free_port()
    process = serve_process(orthanc.dicomweb, tmp_path / "data", port, "--workers", "2")
    try:
        await wait_port(port)
        series_uid, sop_uid, _ = study.instances[0]
        path = f"/dicom-web/studies/{study.uid}/series/{series_uid}/instances/{sop_uid}"
        base = f"http://127.0.0.1:{port}"
        for _ in range(12):  # a connection each: the kernel spreads them over both workers
            status, _ = await asyncio.to_thread(fetch, base + path)
            assert status == 200
        for _ in range(6):
            samples = await asyncio.to_thread(scrape, base + "/metrics")
            labels = {"transaction": "wado", "method": "GET", "status": "200"}
            assert value(samples, "dicomweb_proxy_requests_total", **labels) == 12
            hits = value(samples, "dicomweb_proxy_cache_requests_total", result="hit")
            misses = value(samples, "dicomweb_proxy_cache_requests_total", result="miss")
            assert hits + misses == 12 and misses >= 1
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(process.wait, 30)


def test_bytes_served_from_the_cache_count_sendfile_bodies(
    start_proxy: Callable[..., ProxyThread], orthanc: Orthanc
) -> None:
    """Bodies sent with sendfile bypass aiohttp's byte count; they must still count."""
    from harness.dicomgen import make_study

    big = make_study(1, 1, rows=256, columns=256)  # ~128 KiB: sent with sendfile
    for _, _, data in big.instances:
        orthanc.upload(data)
    proxy = start_proxy(orthanc.dicomweb)
    series_uid, sop_uid, data = big.instances[0]
    url = f"{proxy.dicomweb}/studies/{big.uid}/series/{series_uid}/instances/{sop_uid}"
    assert fetch(url)[0] == 200
    for _ in range(50):  # the fill commits right after its last byte
        body = fetch(url)[1]
        samples = scrape(proxy.url + "/metrics")
        if value(samples, "dicomweb_proxy_cache_requests_total", result="hit"):
            break
    served = value(samples, "dicomweb_proxy_cache_served_bytes_total", source="cache")
    assert served >= len(body) > len(data)
