"""Smoke tests of the benchmark harness's pieces (``python -m bench`` itself is not run).

Only the WAN emulator's lower bounds are timed: a relay that is too slow still passes,
one that forgets to delay or to cap the rate cannot.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import clients, paired, wrk
from bench.burst import percentile
from bench.nginx import render
from bench.wan import Link, WanRelay, Window
from tests.fake_upstream import Answer, FakeUpstream, Received


async def test_wan_relay_delays_each_direction_and_caps_the_rate() -> None:
    payload = os.urandom(200_000)

    async def origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(4)
        writer.write(payload)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(origin, "127.0.0.1", 0)
    relay = WanRelay(server.sockets[0].getsockname()[1], delay_ms=20, rate_mbit=8)
    port = await relay.start()
    try:
        began = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping")
        first = await reader.readexactly(1)
        round_trip = time.monotonic() - began
        rest = await reader.read()
        total = time.monotonic() - began
        writer.close()
    finally:
        await relay.close()
        server.close()
    assert first + rest == payload
    assert round_trip >= 0.040  # 20 ms up + 20 ms down
    assert total >= 0.040 + len(payload) / 1_000_000  # 8 Mbit/s is 1 MB/s


async def test_slow_start_makes_a_large_answer_cost_round_trips() -> None:
    """300 kB from a window of 14.6 kB doubling per 40 ms round trip: 14.6 + 29.2 + ...
    reaches 300 kB in the 5th round trip, so at least 4 round trips after the first byte
    (rate high enough not to matter); a second answer on the same connection, sent
    without an idle, has the grown window and needs none; a third, after an idle longer
    than the retransmission timeout (200 ms), starts over."""
    payload = os.urandom(300_000)

    async def origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(4):
            writer.write(payload)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(origin, "127.0.0.1", 0)
    relay = WanRelay(
        server.sockets[0].getsockname()[1], delay_ms=20, rate_mbit=10_000, slow_start=True
    )
    port = await relay.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        times = []
        for pause in (0.0, 0.0, 0.3):
            await asyncio.sleep(pause)
            writer.write(b"ping")
            await reader.readexactly(1)
            began = time.monotonic()
            await reader.readexactly(len(payload) - 1)
            times.append(time.monotonic() - began)
        writer.close()
    finally:
        await relay.close()
        server.close()
    assert times[0] >= 4 * 0.040
    assert times[1] < times[0] / 2
    assert times[2] >= 4 * 0.040


def test_window_restarts_after_an_idle_longer_than_the_rto() -> None:
    window = Window(rtt=0.05)
    window.sent(14_600, arrives=time.monotonic())
    assert window.open(time.monotonic() + 0.1) == 2 * 14_600  # acked: doubled
    window.last_sent -= 1.0  # an idle second since
    assert window.open(time.monotonic()) == 14_600


def test_link_serialises_chunks_one_after_another() -> None:
    link = Link(delay=0.0, rate_bytes=1000.0)
    first = link.departure(500)
    second = link.departure(500)
    assert second - first >= 0.5


def test_nginx_config_caches_by_accept_with_single_flight() -> None:
    config = render(Path("/tmp/prefix"), port=8081, origin_port=8042, workers=2)
    assert "worker_processes 2;" in config
    assert "listen 127.0.0.1:8081;" in config
    assert "server 127.0.0.1:8042;" in config
    for line in (
        'proxy_cache_key "$request_uri|$http_accept";',
        "proxy_cache_lock on;",
        "proxy_cache_valid 200 1d;",
        "proxy_ignore_headers Cache-Control Expires Set-Cookie Vary;",
        "sendfile on;",
        "keepalive 64;",
        "add_header X-Cache-Status $upstream_cache_status always;",
        "proxy_cache_path /tmp/prefix/cache",
        # The proxy's coding policy: gzip asked for JSON/XML, decoded for clients
        # that do not accept it, never the client's own Accept-Encoding.
        "~*(json|xml) gzip;",
        "proxy_set_header Accept-Encoding $origin_coding;",
        "gunzip on;",
    ):
        assert line in config
    assert config.count("proxy_set_header Accept-Encoding $origin_coding;") == 2
    assert config.count("{") == config.count("}")


def test_wrk_script_sends_a_real_clients_headers_and_result_parses() -> None:
    script = wrk.script(["/a", "/b"], clients.DICOMWEB_CLIENT_INSTANCE)
    assert 'local paths = {"/a", "/b"}' in script
    assert (
        r'["Accept"] = "multipart/related; type=\"application/dicom\"; transfer-syntax=*"' in script
    )
    assert '["Accept-Encoding"] = "gzip, deflate"' in script
    assert 'wrk.format("GET", paths[i], headers)' in script
    result = wrk.parse(
        "Running 1s test\nWRKJSON "
        '{"requests": 200, "bytes": 1048576, "duration_us": 2000000, "p50_us": 1500, '
        '"p99_us": 9000, "non2xx": 0, "socket_errors": 1}\n'
    )
    assert (result.rps, result.mib_s, result.p50_ms, result.p99_ms) == (100, 0.5, 1.5, 9)
    assert result.errors == 1


def test_percentile_is_nearest_rank() -> None:
    values = [float(n) for n in range(1, 51)]
    assert percentile(values, 0.99) == 50
    assert percentile(values, 0.5) == 25


def test_paired_latency_is_the_difference_within_each_pair(fake: FakeUpstream) -> None:
    """A target that answers 30 ms later than the origin is measured as about +30 ms,
    and the origin against itself as about 0, whatever the origin's own time."""

    def answering_after(delay: float) -> Callable[[Received], Answer]:
        # The origin's drift on top: what pairing has to cancel.
        return lambda received: Answer(body="[]", delay=delay + random.uniform(0, 0.01))

    fake.route("GET", "/dicom-web/{path:.*}", answering_after(0.0))
    with FakeUpstream() as slow:
        slow.route("GET", "/dicom-web/{path:.*}", answering_after(0.03))
        added = paired.added_latency(
            fake.dicomweb,
            {"slow": slow.dicomweb, "same": fake.dicomweb},
            "/studies/1/metadata",
            "application/dicom+json",
            pairs=30,
        )
    assert 20 < added["slow"].median_ms < 45
    assert abs(added["same"].median_ms) < 8
    assert added["slow"].pairs == 30


def test_cpu_seconds_counts_what_a_process_spends() -> None:
    from bench.cpu import cpu_seconds

    before = cpu_seconds([os.getpid()])
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    spent = cpu_seconds([os.getpid()]) - before
    assert 0.2 <= spent <= 5
    assert cpu_seconds([2**22 + 1]) == 0  # no such process: nothing, no error


async def test_instant_origin_answers_every_get_with_its_body(aiohttp_client: Any) -> None:
    from bench.instant import app

    client = await aiohttp_client(app(b'[{"x": 1}]', "application/dicom+json"))
    for path in ("/dicom-web/studies/1.2/metadata", "/anything"):
        response = await client.get(path)
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/dicom+json"
        assert await response.read() == b'[{"x": 1}]'


async def test_the_rss_cases_run_end_to_end_on_a_small_size() -> None:
    """bench/rss.py's origin and its three cases (retrieve filling the cache, through
    --no-cache, a STOW split into batches) pass at 20 MiB: the benchmark's own code
    paths are exercised by the suite, not first by `make bench`."""
    from bench.rss import measure

    results = await measure(0.02)
    assert [r["case"] for r in results] == [
        "retrieve, cache filling",
        "retrieve, --no-cache",
        "stow, split into batches",
    ]
    assert all(r["GiB"] == 0.02 for r in results)


def test_settle_waits_for_a_target_still_working(tmp_path: Path) -> None:
    """A server still busy with abandoned requests is waited for before the next round."""
    from bench.hits import Target, settle

    done = tmp_path / "done"
    spin = (
        "import time, pathlib\n"
        "end = time.monotonic() + 1.0\n"
        "while time.monotonic() < end: pass\n"
        f"pathlib.Path({str(done)!r}).touch()\n"
        "time.sleep(30)\n"
    )
    busy = subprocess.Popen([sys.executable, "-c", spin])
    try:
        settle([Target("http://unused", lambda: [busy.pid])])
        assert done.exists()  # settled only once the spinning was over
    finally:
        busy.kill()
        busy.wait()


def test_a_process_from_another_checkout_imports_that_checkouts_code(tmp_path: Path) -> None:
    """bench.ab runs each proxy from its own tree: the module found is the tree's."""
    from bench.servers import Process
    from harness.net import free_port

    tree, seen = tmp_path / "tree", tmp_path / "seen"
    tree.mkdir()
    (tree / "listener.py").write_text(
        "import pathlib, socket, sys, time\n"
        f"pathlib.Path({str(seen)!r}).write_text(__file__)\n"
        "server = socket.create_server(('127.0.0.1', int(sys.argv[1])))\n"
        "time.sleep(30)\n"
    )
    port = free_port()
    process = Process("listener", [str(port)], port, tree)
    try:
        assert Path(seen.read_text()).parent == tree
    finally:
        process.stop()


def test_metadata_timing_sends_exactly_the_clients_headers(fake: FakeUpstream) -> None:
    """curl's request carries no Accept-Encoding (aiohttp would add its own), Chromium's
    its four codings; what is counted is the body as it came over the wire."""
    from bench.viewer import time_metadata

    fake.route(
        "GET", "/dicom-web/studies/1/metadata", Answer(body="[" + "{}," * 999 + "{}]", gzip=True)
    )
    for headers in ({"Accept": "application/dicom+json"}, clients.OHIF_METADATA):
        seconds, size = asyncio.run(time_metadata(fake.dicomweb, "1", headers))
        sent = fake.received[-1].headers
        assert sent.get("Accept-Encoding") == headers.get("Accept-Encoding")
        assert sent["Accept"] == "application/dicom+json"
        assert 0 < size < 4000 - 1  # gzipped, not decoded
        assert seconds > 0


def test_hit_floor_answers_every_request_on_a_connection_with_its_file(tmp_path: Path) -> None:
    """Bigger than a socket buffer, so the rest goes by loop.sendfile and the next
    request on the connection waits for it."""
    import http.client

    from bench import servers

    body = tmp_path / "body"
    body.write_bytes(os.urandom(8 * 1024 * 1024))
    head = tmp_path / "head"
    head.write_bytes(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % body.stat().st_size)
    floor = servers.hit_floor(body, head)
    try:
        connection = http.client.HTTPConnection("127.0.0.1", floor.port, timeout=10)
        for path in ("/a", "/b"):
            connection.request("GET", path)
            assert connection.getresponse().read() == body.read_bytes()
        connection.close()
    finally:
        floor.stop()


def test_relay_floor_passes_path_accept_and_body(fake: FakeUpstream) -> None:
    from bench import servers

    fake.route(
        "GET",
        "/dicom-web/studies/1",
        Answer(body=b"x" * 300_000, headers={"Content-Type": "application/dicom"}),
    )
    relay = servers.relay_floor(fake.url)
    try:
        request = urllib.request.Request(
            relay.url + "/dicom-web/studies/1", headers={"Accept": "application/dicom"}
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.read() == b"x" * 300_000
            assert answer.headers["Content-Type"] == "application/dicom"
    finally:
        relay.stop()
    assert fake.received[-1].headers["Accept"] == "application/dicom"
    assert fake.received[-1].headers["Accept-Encoding"] == "identity"
