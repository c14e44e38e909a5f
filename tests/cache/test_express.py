"""The express lane (proxy/cache/express.py, proxy/server.py): repeated hits answered
before aiohttp parses them, byte for byte as aiohttp's own answer, and only those."""

from __future__ import annotations

import gc
import logging
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from harness.dicomgen import Study, make_study
from harness.orthanc import Orthanc
from proxy import internals, server
from proxy.cache.express import Answer, Candidate, Lane, candidate, parse
from proxy.cache.policy import Lifetime, Policy
from proxy.cache.store import Hit, Meta
from proxy.state import EXPRESS, METRICS
from tests.support import ProxyThread, eventually

INSTANCE = 'multipart/related; type="application/dicom"; transfer-syntax=*'
# What dicomweb-client (requests) and Chromium send.
REQUESTS = {"Accept-Encoding": "gzip, deflate", "User-Agent": "python-requests/2.32.3"}
CHROMIUM = {
    "Accept-Encoding": "gzip, deflate, br, zstd",
    "Accept-Language": "en-US,en;q=0.9",
    "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/156.0.0.0 Safari/537.36",
    "sec-ch-ua": '"Chromium";v="156"',
    "sec-ch-ua-mobile": "?0",
    "sec-ch-ua-platform": '"Linux"',
    "Sec-Fetch-Site": "same-origin",
    "Sec-Fetch-Mode": "cors",
    "Sec-Fetch-Dest": "empty",
    "Referer": "http://127.0.0.1/viewer/",
}

# -- parsing: one rule for the lane and for what aiohttp parsed ------------------------

SIGNED = (b"/a", b"h", b"x/y", b"gzip")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"GET /a HTTP/1.1\r\nHost: h\r\nAccept: x/y\r\nAccept-Encoding: gzip\r\n\r\n", SIGNED),
        (b"GET /a HTTP/1.1\r\nhost:h\r\naccept:  x/y \r\nACCEPT-ENCODING:gzip\r\n\r\n", SIGNED),
        (b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n", (b"/a", b"h", None, None)),
        (
            b"GET /a?b=1 HTTP/1.1\r\nHost: h\r\nUser-Agent: curl/8\r\nConnection: keep-alive\r\n\r\n",
            (b"/a?b=1", b"h", None, None),
        ),
    ],
)
def test_signed_requests(data: bytes, expected: tuple[Any, ...]) -> None:
    found = parse(data)
    assert found is not None and found.signature == expected


@pytest.mark.parametrize(
    "header",
    [
        b"Range: bytes=0-9",
        b"If-None-Match: *",
        b"If-Modified-Since: Tue, 01 Dec 2026 00:00:00 GMT",
        b"Cache-Control: no-cache",
        b"Pragma: no-cache",
        b"Authorization: Bearer x",
        b"Cookie: a=b",
        b"Origin: http://elsewhere",
        b"Forwarded: host=x",
        b"X-Forwarded-Host: x",
        b"X-Forwarded-Proto: https",
        b"Connection: close",
        b"X-Request-ID: not valid!",
        b"Host: second",
        b"X-Unknown: 1",
    ],
)
def test_a_header_that_may_change_the_answer_is_not_signed(header: bytes) -> None:
    found = parse(b"GET /a HTTP/1.1\r\nHost: h\r\n" + header + b"\r\n\r\n")
    assert found == Candidate(None, None)  # still one whole request: aiohttp's, lane on


@pytest.mark.parametrize(
    "data",
    [
        b"GET /a HTTP/1.1\r\nHost: h\r\n",  # not complete
        b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n",  # two
        b"GET /a HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",  # a body
        b"GET /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: h\r\n\r\n",
        b"HEAD /a HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET /a HTTP/1.0\r\nHost: h\r\n\r\n",
        b"GET http://h/a HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET /a HTTP/1.1\nHost: h\n\n",  # bare LF
        b"GET /a HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n",  # obs-fold
        b"GET /a HTTP/1.1\r\nBad Name: h\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: \xc3\xa9\r\n\r\n",
    ],
)
def test_anything_but_one_whole_bodiless_get_is_aiohttps(data: bytes) -> None:
    assert parse(data) is None


def test_a_well_formed_request_id_is_kept() -> None:
    found = parse(b"GET /a HTTP/1.1\r\nHost: h\r\nX-Request-ID: abc-123\r\n\r\n")
    assert found == Candidate((b"/a", b"h", None, None), b"abc-123")


def test_learning_and_lookup_agree_on_raw_headers() -> None:
    """aiohttp's raw headers (name case kept, values stripped) sign the same."""
    raw = ((b"HOST", b"h"), (b"accept", b"x/y"), (b"Accept-Encoding", b"gzip"))
    assert candidate(b"/a", raw) == Candidate(SIGNED, None)


# -- the lane's table -------------------------------------------------------------------


def _hit(path: str) -> Hit:
    meta = Meta(status=200, headers={}, stored_at=0.0, size=3, etag='"e"', rewrite=False)
    return Hit(meta, Path(path))


def _answer(path: str, data: bytes | None = None) -> Answer:
    policy = Policy(("u", "", path, "", ""), Lifetime.IMMUTABLE, None)
    return Answer(policy, Path(path), b"HTTP/1.1 200 OK\r\n", 3, data)


def test_an_answer_is_given_only_while_its_entry_is_the_one_learned() -> None:
    current: dict[str, Hit | None] = {"/a": _hit("/a")}
    lane = Lane(lambda policy: current[policy.parts[2]])
    lane.learn(SIGNED, _answer("/a"))
    assert lane.find(Candidate(SIGNED, None)) is not None
    current["/a"] = _hit("/refilled")  # the entry was filled again: another body
    assert lane.find(Candidate(SIGNED, None)) is None
    assert len(lane) == 0  # forgotten; the next hit through aiohttp learns it again


def test_the_lane_is_bounded_in_answers_and_in_bytes_held() -> None:
    lane = Lane(lambda policy: _hit(policy.parts[2]), max_answers=2, max_held_bytes=10)
    for name in ("/1", "/2", "/3"):
        lane.learn((name.encode(), None, None, None), _answer(name))
    assert len(lane) == 2 and lane.find(Candidate((b"/1", None, None, None), None)) is None
    lane.learn((b"/big", None, None, None), _answer("/big", b"x" * 8))
    lane.learn((b"/big2", None, None, None), _answer("/big2", b"x" * 8))
    assert lane.find(Candidate((b"/big", None, None, None), None)) is None
    assert lane.find(Candidate((b"/big2", None, None, None), None)) is not None


def test_a_closed_lane_answers_nothing() -> None:
    lane = Lane(lambda policy: _hit("/a"))
    lane.learn(SIGNED, _answer("/a"))
    lane.close()
    lane.learn(SIGNED, _answer("/a"))
    assert lane.find(Candidate(SIGNED, None)) is None


# -- end to end, on a real Orthanc ------------------------------------------------------


OPEN: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_connections() -> Iterator[None]:
    yield
    while OPEN:
        OPEN.pop().close()


class Client:
    """One keep-alive connection speaking exactly the bytes it is given."""

    def __init__(self, port: int, *, receive_buffer: int | None = None) -> None:
        self.sock = socket.socket()
        OPEN.append(self.sock)
        if receive_buffer:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self) -> tuple[str, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status, *lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines)
        if headers.get("Transfer-Encoding") == "chunked":
            return status, headers, self._chunks()
        return status, headers, self._take(int(headers.get("Content-Length", "0")))

    def _take(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        taken, self.buffer = self.buffer[:size], self.buffer[size:]
        return taken

    def _chunks(self) -> bytes:
        body = b""
        while True:
            while b"\r\n" not in self.buffer:
                self._fill()
            line, _, self.buffer = self.buffer.partition(b"\r\n")
            size = int(line.split(b";")[0], 16)
            body += self._take(size + 2)[:size]
            if size == 0:
                return body

    def get(self, target: str, headers: dict[str, str]) -> tuple[str, dict[str, str], bytes]:
        self.send(request(target, headers))
        return self.response()

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, TimeoutError):
            return False

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("closed")
        self.buffer += chunk


def request(target: str, headers: dict[str, str], *, first: str = "GET") -> bytes:
    lines = [f"{first} {target} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@pytest.fixture
def big_study(orthanc: Orthanc) -> Study:
    """512 x 512 x 16-bit slices (≈512 KiB each): sent from the file with sendfile."""
    created = make_study(1, 2, rows=512, columns=512)
    for _, _, data in created.instances:
        orthanc.upload(data)
    return created


def _instance(proxy: ProxyThread, study: Study, index: int = 0) -> str:
    series, sop, _ = study.instances[index]
    return f"{proxy.settings.base_path}/studies/{study.uid}/series/{series}/instances/{sop}"


def _lane(proxy: ProxyThread) -> Lane:
    assert proxy.app is not None
    return proxy.app[EXPRESS]


Response = tuple[str, dict[str, str], bytes]


def until_the_lane_answers(
    proxy: ProxyThread, connection: Client, target: str, headers: dict[str, str]
) -> list[Response]:
    """Requests on ``connection`` until the lane answers one.  The first is a MISS, a
    HIT through aiohttp is learned, and a request that arrives while aiohttp is still
    finishing an answer is queued for aiohttp; from the lane's first answer on, aiohttp
    is idle and the lane answers every learned request on the connection."""
    lane = _lane(proxy)
    before, answers = lane.count, []
    while lane.count == before:
        assert len(answers) < 6, [a[1].get("X-Cache") for a in answers]
        answers.append(connection.get(target, headers))
    return answers


def _same_but_per_answer(a: dict[str, str], b: dict[str, str]) -> bool:
    def fixed(headers: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in headers.items() if k not in ("Date", "X-Request-ID")}

    return fixed(a) == fixed(b)


@pytest.mark.parametrize(
    ("what", "accept", "client"),
    [
        ("instance", INSTANCE, REQUESTS),  # from the file, by sendfile
        ("metadata", "application/dicom+json", CHROMIUM),  # the gzip variant in memory
        ("small instance", INSTANCE, {}),  # curl: a body below 64 KiB, in memory
    ],
)
def test_repeats_are_answered_by_the_lane_as_aiohttp_answered_them(
    proxy: ProxyThread,
    big_study: Study,
    study: Study,
    what: str,
    accept: str,
    client: dict[str, str],
) -> None:
    if what == "metadata":
        target = f"{proxy.settings.base_path}/studies/{big_study.uid}/metadata"
    else:
        target = _instance(proxy, big_study if what == "instance" else study)
    headers = {"Accept": accept, **client}
    connection = Client(proxy.settings.listen_port)
    answers = until_the_lane_answers(proxy, connection, target, headers)
    assert answers[0][1]["X-Cache"] == "MISS" and answers[-2][1]["X-Cache"] == "HIT"
    through_aiohttp = answers[-2]  # the HIT aiohttp answered, and the lane learned
    answers += [connection.get(target, headers) for _ in range(2)]
    assert _lane(proxy).count == 3
    for status, response_headers, body in answers[-3:]:
        assert status == "HTTP/1.1 200 OK"
        assert body == through_aiohttp[2]
        assert _same_but_per_answer(response_headers, through_aiohttp[1])
        assert response_headers["X-Request-ID"] != through_aiohttp[1]["X-Request-ID"]
    if what == "metadata":
        assert answers[-1][1]["Content-Encoding"] == "gzip"
        assert answers[-1][1]["ETag"].startswith("W/")
    assert len(answers[-1][2]) == int(answers[-1][1]["Content-Length"])


def test_each_client_is_answered_in_the_coding_it_accepts(proxy: ProxyThread, study: Study) -> None:
    target = f"{proxy.settings.base_path}/studies/{study.uid}/metadata"
    connection = Client(proxy.settings.listen_port)
    plain = {"Accept": "application/dicom+json"}
    until_the_lane_answers(proxy, connection, target, {**plain, **CHROMIUM})
    until_the_lane_answers(proxy, connection, target, plain)
    gzipped = connection.get(target, {**plain, **CHROMIUM})
    identity = connection.get(target, plain)
    assert _lane(proxy).count == 4
    assert gzipped[1]["Content-Encoding"] == "gzip"
    assert "Content-Encoding" not in identity[1] and identity[2].startswith(b"[")


@pytest.mark.parametrize(
    "extra",
    [
        {"Range": "bytes=0-99"},
        {"If-None-Match": "*"},
        {"Cache-Control": "no-cache"},
        {"Origin": "http://viewer.example"},
        {"X-Forwarded-Host": "pacs.example.org"},
        {"Connection": "close"},
        {"X-Custom": "1"},
    ],
)
def test_a_request_whose_answer_may_differ_is_answered_by_aiohttp(
    proxy: ProxyThread, big_study: Study, extra: dict[str, str]
) -> None:
    target = _instance(proxy, big_study)
    headers = {"Accept": INSTANCE}
    connection = Client(proxy.settings.listen_port)
    until_the_lane_answers(proxy, connection, target, headers)
    status, answer, body = connection.get(target, {**headers, **extra})
    assert _lane(proxy).count == 1
    if "Range" in extra:
        assert status.startswith("HTTP/1.1 206") and len(body) == 100
    elif "If-None-Match" in extra:
        assert status.startswith("HTTP/1.1 304")
    else:
        assert status == "HTTP/1.1 200 OK" and answer["X-Cache"] in ("HIT", "BYPASS")


def test_the_clients_request_id_is_echoed(proxy: ProxyThread, big_study: Study) -> None:
    target = _instance(proxy, big_study)
    connection = Client(proxy.settings.listen_port)
    until_the_lane_answers(proxy, connection, target, {"Accept": INSTANCE})
    answer = connection.get(target, {"Accept": INSTANCE, "X-Request-ID": "trace:42"})
    assert _lane(proxy).count == 2 and answer[1]["X-Request-ID"] == "trace:42"


def test_a_purged_entry_is_not_answered(
    orthanc: Orthanc, big_study: Study, start_proxy: Callable[..., ProxyThread]
) -> None:
    proxy = start_proxy(orthanc.dicomweb, admin_token="purge-token")
    target = _instance(proxy, big_study)
    connection = Client(proxy.settings.listen_port)
    until_the_lane_answers(proxy, connection, target, {"Accept": INSTANCE})
    admin = {"Authorization": "Bearer purge-token"}
    assert requests.delete(proxy.url + "/admin/cache", headers=admin, timeout=10).ok
    assert connection.get(target, {"Accept": INSTANCE})[1]["X-Cache"] == "MISS"
    assert _lane(proxy).count == 1


def test_body_bytes_are_never_taken_for_a_request(proxy: ProxyThread, big_study: Study) -> None:
    """A POST's body spelling a learned GET is the POST's body: once aiohttp was given
    anything but whole bodiless requests, the lane is off for the connection."""
    target = _instance(proxy, big_study)
    learner = Client(proxy.settings.listen_port)
    until_the_lane_answers(proxy, learner, target, {"Accept": INSTANCE})
    smuggled = request(target, {"Accept": INSTANCE})
    connection = Client(proxy.settings.listen_port)
    connection.send(
        b"POST /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % len(smuggled)
    )
    time.sleep(0.2)  # the body in a segment of its own, after aiohttp took the head
    connection.send(smuggled)
    status, _, _ = connection.response()
    assert status.startswith("HTTP/1.1 405")
    time.sleep(0.2)
    assert _lane(proxy).count == 1  # nothing answered from the body
    assert connection.get("/healthz", {})[0] == "HTTP/1.1 200 OK"  # framing intact


def test_lane_answers_are_counted_and_logged(
    proxy: ProxyThread, big_study: Study, caplog: pytest.LogCaptureFixture
) -> None:
    target = _instance(proxy, big_study)
    assert proxy.app is not None
    metrics = proxy.app[METRICS]
    connection = Client(proxy.settings.listen_port)
    with caplog.at_level("INFO", logger="dicomweb_proxy.access"):
        sent = len(until_the_lane_answers(proxy, connection, target, {"Accept": INSTANCE}))
        for index in range(2):
            connection.get(target, {"Accept": INSTANCE, "X-Request-ID": f"id-{index}"})
    sent += 2
    assert _lane(proxy).count == 3

    def logged() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "dicomweb_proxy.access"]

    # The proxy's thread logs an answer just after its last byte went out, maybe after
    # the client read it.
    eventually(lambda: len(logged()) >= sent, message="the access lines were not written")
    lines = logged()
    assert len(lines) == sent
    assert metrics.value("dicomweb_proxy_cache_requests_total", result="hit") == sent - 1
    assert (
        metrics.value(
            "dicomweb_proxy_requests_total", transaction="wado", method="GET", status="200"
        )
        == sent
    )
    count = metrics.value("dicomweb_proxy_request_duration_seconds_count", transaction="wado")
    assert count == sent
    last = lines[-1].access  # type: ignore[attr-defined]
    assert (last["cache"], last["status"], last["request_id"]) == ("HIT", 200, "id-1")
    assert last["path"].endswith(big_study.instances[0][1]) and last["remote"] == "127.0.0.1"
    assert last["bytes"] > len(big_study.instances[0][2])


def test_a_closed_connection_never_closes_a_later_ones_descriptor(
    proxy: ProxyThread, big_study: Study
) -> None:
    """The lane's socket object is detached when its connection is lost: collected
    later, it must not close the descriptor number a newer connection now has."""
    target, accept = _instance(proxy, big_study), {"Accept": INSTANCE}
    before = _lane(proxy).count
    for _ in range(8):  # closed connections, whose descriptor numbers are reused
        old = Client(proxy.settings.listen_port)
        until_the_lane_answers(proxy, old, target, accept)
        old.sock.close()
    latest = Client(proxy.settings.listen_port)
    until_the_lane_answers(proxy, latest, target, accept)
    gc.collect()  # a socket object not detached would close its descriptor here
    status, headers, body = latest.get(target, accept)
    assert status == "HTTP/1.1 200 OK" and headers["X-Cache"] == "HIT"
    assert len(body) == int(headers["Content-Length"])
    assert big_study.instances[0][2] in body
    assert _lane(proxy).count >= before + 10


@pytest.mark.parametrize(
    "rows",
    [
        1024,  # 2 MiB, sent from the file: the rest by loop.sendfile
        320,  # 200 KiB, held in memory: the rest by the transport's buffer
    ],
)
def test_a_slow_reader_gets_every_byte_and_its_next_answer(
    proxy: ProxyThread, orthanc: Orthanc, rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The socket takes part of the answer at once; the rest follows, and a request sent
    meanwhile is answered after it, in order."""
    rests: list[str] = []
    real_send_now, real_send_rest = internals.send_now, server.Connection._send_rest

    def send_some(sock: Any, parts: list[bytes]) -> int:  # a socket that takes 1,000 bytes
        rests.append("held")
        return real_send_now(sock, [b"".join(parts)[:1000]])

    async def send_rest(self: server.Connection, *args: Any) -> None:
        rests.append("file")
        await real_send_rest(self, *args)

    monkeypatch.setattr(internals, "send_now", send_some)
    monkeypatch.setattr(server.Connection, "_send_rest", send_rest)
    huge = make_study(1, 1, rows=rows, columns=rows)
    for _, _, data in huge.instances:
        orthanc.upload(data)
    target = _instance(proxy, huge)
    headers = {"Accept": INSTANCE}
    connection = Client(proxy.settings.listen_port, receive_buffer=4096)
    expected = until_the_lane_answers(proxy, connection, target, headers)[-1]
    connection.send(request(target, headers))
    time.sleep(0.3)  # the answer is stuck in flight
    connection.send(request(target, headers))
    answers = [connection.response(), connection.response()]
    assert _lane(proxy).count == 3
    assert all(body == expected[2] for _, _, body in answers)
    assert all(_same_but_per_answer(h, expected[1]) for _, h, _ in answers)
    assert rests and set(rests) == {"file" if rows == 1024 else "held"}


def test_a_connection_in_use_is_kept_and_an_idle_one_closed(
    orthanc: Orthanc, big_study: Study, start_proxy: Callable[..., ProxyThread]
) -> None:
    """aiohttp's idle timer (--client-timeout) starts again with each lane answer."""
    proxy = start_proxy(orthanc.dicomweb, client_timeout=1.0)
    target = _instance(proxy, big_study)
    connection = Client(proxy.settings.listen_port)
    until_the_lane_answers(proxy, connection, target, {"Accept": INSTANCE})
    for _ in range(8):  # 2.4 s on one connection, more than the timeout
        time.sleep(0.3)
        assert connection.get(target, {"Accept": INSTANCE})[0] == "HTTP/1.1 200 OK"
    assert _lane(proxy).count == 9
    time.sleep(2.5)
    assert connection.closed()


def test_no_express_and_inbound_checks_keep_every_request_in_aiohttp(
    orthanc: Orthanc, start_proxy: Callable[..., ProxyThread], tmp_path: Path
) -> None:
    off = start_proxy(orthanc.dicomweb, no_express=True)
    assert off.app is not None and EXPRESS not in off.app
    tokens = tmp_path / "tokens"
    tokens.write_text("secret-token\n")
    gated = start_proxy(orthanc.dicomweb, inbound_auth="bearer", inbound_tokens_file=str(tokens))
    assert gated.app is not None and EXPRESS not in gated.app
    target = f"{gated.settings.base_path}/studies"
    connection = Client(gated.settings.listen_port)
    for _ in range(3):
        status, _, _ = connection.get(target, {"Authorization": "Bearer secret-token"})
        assert status == "HTTP/1.1 200 OK"
    assert connection.get(target, {})[0].startswith("HTTP/1.1 401")
