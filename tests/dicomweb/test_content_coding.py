"""Content coding end to end (SPEC section 2, "Content coding"; section 3, "Only the
representation asked for is stored").

What the upstream is asked for (the proxy's own Accept-Encoding, never the client's),
what is decoded, rewritten and stored, what each client gets back, and what is relayed
but never stored.  Clients are aiohttp sessions that send exactly the Accept-Encoding a
case names and decode nothing themselves:

=========  ========================  ==========================================
client     Accept-Encoding           who sends it
=========  ========================  ==========================================
curl       (none)                    curl, urllib, most scripts
requests   gzip, deflate             requests, dicomweb-client
chromium   gzip, deflate, br, zstd   Chromium (OHIF in a browser)
identity   identity                  clients that refuse any coding
=========  ========================  ==========================================
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import io
import json
import logging
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pydicom
import pytest
import requests
from aiohttp import web
from aiohttp.test_utils import TestServer
from dicomweb_client.api import DICOMwebClient
from multidict import CIMultiDictProxy

from harness.dicomgen import Study, make_instance, make_study
from harness.orthanc import Orthanc
from proxy.app import create_app
from proxy.dicomweb.coding import DECODERS
from proxy.dicomweb.media import parse_media_type
from proxy.state import CACHE, METRICS
from tests.fake_upstream import Answer, FakeUpstream, Received
from tests.support import ProxyThread, eventually_async, make_settings

ServerFactory = Callable[..., Awaitable[TestServer]]
ProxyOn = Callable[..., Awaitable[TestServer]]

CLIENT_CODINGS: dict[str, str | None] = {
    "curl": None,
    "requests": "gzip, deflate",
    "chromium": "gzip, deflate, br, zstd",
    "identity": "identity",
}
# Written out rather than computed with the proxy's own parser.
ACCEPTS_GZIP = {"curl": False, "requests": True, "chromium": True, "identity": False}
JSON = "application/dicom+json"
DICOM = 'multipart/related; type="application/dicom"'
FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=*"
NOT_STORED = "dicomweb_proxy_cache_not_stored_total"
ORTHANC_HOST = b"http://localhost/dicom-web"  # Debian's DicomWeb.Host, no port
FOREIGN = "http://archive.internal:8042/dicom-web"
BOUNDARY = "canned-0123456789"
INSTANCE_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
# Enough instances for a study metadata document over 1 MiB: its miss is rewritten as it
# streams, in 256 KiB chunks with URLs across their edges (proxy.responses.relay).
INSTANCES = 3000


@dataclass
class Reply:
    """What a client got back."""

    status: int
    headers: CIMultiDictProxy[str]
    raw: bytes  # as it came over the wire

    @property
    def x_cache(self) -> str | None:
        return self.headers.get("X-Cache")

    @property
    def body(self) -> bytes:
        """The representation: gunzipped when the proxy said gzip."""
        coding = self.headers.get("Content-Encoding")
        if coding is None:
            return self.raw
        assert coding == "gzip", f"unexpected Content-Encoding {coding!r}"
        return gzip.decompress(self.raw)


async def get(
    session: aiohttp.ClientSession,
    url: str,
    accept: str | None = None,
    coding: str | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    sent = dict(headers or {})
    if accept is not None:
        sent["Accept"] = accept
    if coding is not None:
        sent["Accept-Encoding"] = coding
    async with session.get(url, headers=sent) as response:
        return Reply(response.status, response.headers, await response.read())


async def settle(app: web.Application | None) -> None:
    """Until every fill has been committed or discarded: a fill outlives its response."""
    assert app is not None
    cache = app[CACHE]
    await eventually_async(lambda: not cache._fills, message="fills did not finish")


def assert_coding(answer: Reply, *, textual: bool, client: str) -> None:
    """gzip exactly when the client accepts it and the body is JSON/XML; Vary says so."""
    wanted = "gzip" if textual and ACCEPTS_GZIP[client] else None
    assert answer.headers.get("Content-Encoding") == wanted, (client, dict(answer.headers))
    if textual:
        vary = {item.strip().lower() for item in answer.headers.get("Vary", "").split(",")}
        assert "accept-encoding" in vary, dict(answer.headers)


def assert_no_leak(answer: Reply, leaks: tuple[str, ...]) -> None:
    body = answer.body
    for leak in leaks:
        assert leak.encode() not in body, leak
        for name, value in answer.headers.items():
            assert leak not in value, (leak, name, value)


def payloads(answer: Reply) -> list[bytes]:
    """The part bodies of a whole multipart/related answer (RFC 2046 section 5.1.1)."""
    _, params = parse_media_type(answer.headers["Content-Type"])
    delimiter = b"\r\n--" + params["boundary"].encode()
    pieces = (b"\r\n" + answer.body).split(delimiter)
    assert pieces[0] == b"" and pieces[-1].startswith(b"--"), "not a whole multipart body"
    return [piece.split(b"\r\n\r\n", 1)[1] for piece in pieces[1:-1]]


def announced_urls(document: Any) -> list[str]:
    """Every RetrieveURL (0008,1190) and BulkDataURI in a DICOM JSON document."""
    found: list[str] = []
    if isinstance(document, list):
        for item in document:
            found += announced_urls(item)
    elif isinstance(document, dict):
        for key, value in document.items():
            if key == "BulkDataURI":
                found.append(value)
            elif key == "00081190":
                found += value.get("Value", [])
            else:
                found += announced_urls(value)
    return found


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """Sends only the Accept-Encoding a test names, and decodes nothing."""
    async with aiohttp.ClientSession(
        auto_decompress=False, skip_auto_headers=("Accept-Encoding",)
    ) as opened:
        yield opened


@pytest.fixture
def proxy_on(aiohttp_server: ServerFactory, tmp_path: Path) -> ProxyOn:
    """The proxy served in the test's loop, in front of an in-process upstream."""
    started = 0

    async def start(upstream_url: str, **overrides: Any) -> TestServer:
        nonlocal started
        started += 1
        settings = make_settings(upstream_url, tmp_path / f"proxy-{started}", **overrides)
        return await aiohttp_server(create_app(settings))

    return start


def root(server: TestServer) -> str:
    return f"http://127.0.0.1:{port(server)}"


def port(server: TestServer) -> int:
    assert server.port is not None  # set once started
    return server.port


# -- 1. in-process archives that gzip as CDNs and dcm4chee do ---------------------------


def qido_body(study: str, own: str, foreign: str) -> bytes:
    """Two matches: one under the archive's own base URL, one under a balancer's."""
    matches = [
        {
            "0020000D": {"vr": "UI", "Value": [uid]},
            "00081190": {"vr": "UR", "Value": [f"{base}/studies/{uid}"]},
            "00201208": {"vr": "IS", "Value": [INSTANCES]},
        }
        for uid, base in ((study, own), (f"{study}.9", foreign))
    ]
    return json.dumps(matches).encode()


def metadata_body(study: str, own: str, foreign: str) -> bytes:
    """Study metadata: RetrieveURL and BulkDataURI of every instance, hosts alternating."""
    items = []
    for number in range(1, INSTANCES + 1):
        base = own if number % 2 else foreign
        url = f"{base}/studies/{study}/series/{study}.1/instances/{study}.1.{number}"
        items.append(
            {
                "0020000D": {"vr": "UI", "Value": [study]},
                "00080018": {"vr": "UI", "Value": [f"{study}.1.{number}"]},
                "00081190": {"vr": "UR", "Value": [url]},
                "7FE00010": {"vr": "OW", "BulkDataURI": f"{url}/bulk/7FE00010"},
            }
        )
    return json.dumps(items).encode()


@functools.lru_cache(maxsize=16)
def instance_body(study: str, series: str, sop: str) -> bytes:
    """One CT instance (256 x 256) as ``multipart/related; type="application/dicom"``."""
    data = make_instance(study, series, 1, rows=256, columns=256, sop_uid=sop)
    head = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def serve_canned(fake: FakeUpstream, gzips: str) -> None:
    """QIDO-RS, study metadata and instance retrieves for any UIDs, with canned bodies
    that carry the archive's own URLs and a foreign host's (an archive behind a load
    balancer announces the balancer's name).  ``always`` gzips everything, bulk data too,
    whatever the request asked for (a CDN or corporate gateway that compresses on the
    fly, chunked); ``negotiated`` gzips only QIDO and metadata answers and only when the
    request's ``Accept-Encoding`` names gzip (dcm4chee / Undertow)."""
    own = fake.dicomweb

    def coded(asked: Received, body: bytes, content_type: str, location: str) -> Answer:
        headers = {"Content-Type": content_type}
        if location:
            headers["Content-Location"] = location
        if gzips == "always":
            return Answer(body=body, headers=headers, gzip=True, framing="chunked", pieces=8)
        textual = content_type == JSON
        wants = "gzip" in asked.headers.get("Accept-Encoding", "").lower()
        return Answer(body=body, headers=headers, gzip=textual and wants)

    def qido(asked: Received) -> Answer:
        study = asked.query.get("StudyInstanceUID", "1.2.3")
        return coded(asked, qido_body(study, own, FOREIGN), JSON, "")

    def metadata(asked: Received) -> Answer:
        study = asked.params["study"]
        location = f"{FOREIGN}/studies/{study}/metadata"
        return coded(asked, metadata_body(study, own, FOREIGN), JSON, location)

    def instance(asked: Received) -> Answer:
        body = instance_body(asked.params["study"], asked.params["series"], asked.params["sop"])
        location = own + asked.path.removeprefix("/dicom-web")
        return coded(asked, body, INSTANCE_TYPE, location)

    fake.route("GET", "/dicom-web/studies", qido)
    fake.route("GET", "/dicom-web/studies/{study}/metadata", metadata)
    fake.route("GET", "/dicom-web/studies/{study}/series/{series}/instances/{sop}", instance)


@dataclass(frozen=True)
class Canned:
    path: str  # with its query, as the archive sees it
    accept: str
    textual: bool
    sent: bytes  # the body as the archive sends it (before its coding)
    expected: bytes  # the body the client must get, once decoded
    location: str | None  # the Content-Location the client must get


def canned(resource: str, study: str, own: str, public: str) -> Canned:
    series, sop = f"{study}.1", f"{study}.1.1"
    if resource == "qido":
        return Canned(
            f"/dicom-web/studies?StudyInstanceUID={study}",
            JSON,
            True,
            qido_body(study, own, FOREIGN),
            qido_body(study, public, public),
            None,
        )
    if resource == "metadata":
        return Canned(
            f"/dicom-web/studies/{study}/metadata",
            JSON,
            True,
            metadata_body(study, own, FOREIGN),
            metadata_body(study, public, public),
            f"{public}/studies/{study}/metadata",
        )
    relative = f"/studies/{study}/series/{series}/instances/{sop}"
    body = instance_body(study, series, sop)
    return Canned(f"/dicom-web{relative}", DICOM, False, body, body, public + relative)


# The Accept-Encoding the proxy must send the archive for each resource.
ASKS = {"qido": "gzip", "metadata": "gzip", "instance": "identity"}


@pytest.mark.parametrize("resource", list(ASKS))
@pytest.mark.parametrize("client", list(CLIENT_CODINGS))
@pytest.mark.parametrize("gzips", ["always", "negotiated"])
async def test_canned_archive_decoded_rewritten_stored_and_coded_per_client(
    fake: FakeUpstream,
    proxy_on: ProxyOn,
    session: aiohttp.ClientSession,
    gzips: str,
    client: str,
    resource: str,
) -> None:
    serve_canned(fake, gzips)
    proxy = await proxy_on(fake.dicomweb, qido_ttl=60)
    public = f"{root(proxy)}/dicom-web"
    case = canned(resource, "1.2.3.4", fake.dicomweb, public)
    assert case.sent != case.expected or not case.textual  # premise: URLs to rewrite
    url = root(proxy) + case.path
    leaks = (f"127.0.0.1:{fake.port}", "archive.internal")
    content_type = JSON if case.textual else INSTANCE_TYPE

    first = await get(session, url, case.accept, CLIENT_CODINGS[client])
    await settle(proxy.app)
    second = await get(session, url, case.accept, CLIENT_CODINGS[client])
    assert (first.status, first.x_cache) == (200, "MISS")
    assert (second.status, second.x_cache) == (200, "HIT")
    assert first.headers.get("Content-Location") == case.location
    for answer in (first, second):
        assert answer.headers["Content-Type"] == content_type
        assert_coding(answer, textual=case.textual, client=client)
        assert answer.body == case.expected
        assert_no_leak(answer, leaks)
    # One entry serves every client, each in its own coding.
    for other, coding in CLIENT_CODINGS.items():
        hit = await get(session, url, case.accept, coding)
        assert (hit.status, hit.x_cache) == (200, "HIT"), other
        assert_coding(hit, textual=case.textual, client=other)
        assert hit.body == case.expected, other
        assert_no_leak(hit, leaks)
    asked = [r.headers.get("Accept-Encoding") for r in fake.received if r.path_qs == case.path]
    assert asked == [ASKS[resource]]
    assert {r.headers.get("Accept-Encoding") for r in fake.received} <= {"gzip", "identity"}
    # Premise: the archive codes as it is meant to (always, or when asked and textual).
    asking = "identity" if gzips == "always" else "gzip"
    direct = await get(session, fake.url + case.path, case.accept, asking)
    assert direct.headers.get("Content-Encoding") == (
        "gzip" if gzips == "always" or case.textual else None
    )


# -- 2. the real Orthanc, on the configuration Debian ships -----------------------------


def orthanc_resources(study: Study) -> dict[str, tuple[str, str]]:
    """(path below the DICOMweb base, Accept) of each resource."""
    series, sop, _ = study.instances[0]
    instance = f"/studies/{study.uid}/series/{series}/instances/{sop}"
    return {
        "qido": (f"/studies?StudyInstanceUID={study.uid}", JSON),
        "study metadata": (f"/studies/{study.uid}/metadata", JSON),
        "series metadata": (f"/studies/{study.uid}/series/{series}/metadata", JSON),
        "instance metadata": (f"{instance}/metadata", JSON),
        "instance": (instance, DICOM),
        "frame": (f"{instance}/frames/1", FRAMES),
    }


ORTHANC_RESOURCES = [
    "qido",
    "study metadata",
    "series metadata",
    "instance metadata",
    "instance",
    "frame",
]


@pytest.mark.parametrize("resource", ORTHANC_RESOURCES)
@pytest.mark.parametrize("client", list(CLIENT_CODINGS))
async def test_orthanc_answers_decoded_rewritten_stored_and_coded_per_client(
    orthanc: Orthanc,
    study: Study,
    start_proxy: Callable[..., ProxyThread],
    session: aiohttp.ClientSession,
    client: str,
    resource: str,
) -> None:
    proxy = start_proxy(orthanc.dicomweb, qido_ttl=60)
    relative, accept = orthanc_resources(study)[resource]
    textual = accept == JSON
    direct = await get(session, orthanc.dicomweb + relative, accept)  # identity
    assert direct.status == 200 and "Content-Encoding" not in direct.headers
    if textual:
        # Premise: asked for gzip, as the proxy asks, Orthanc sends gzip.
        coded = await get(session, orthanc.dicomweb + relative, accept, "gzip")
        assert coded.headers.get("Content-Encoding") == "gzip"

    first = await get(session, proxy.dicomweb + relative, accept, CLIENT_CODINGS[client])
    await settle(proxy.app)
    second = await get(session, proxy.dicomweb + relative, accept, CLIENT_CODINGS[client])
    assert (first.status, first.x_cache) == (200, "MISS")
    assert (second.status, second.x_cache) == (200, "HIT")
    for answer in (first, second):
        assert_coding(answer, textual=textual, client=client)
        if textual:
            assert answer.body == direct.raw.replace(ORTHANC_HOST, proxy.dicomweb.encode())
        else:
            assert payloads(answer) == payloads(direct)
    if resource == "instance":
        assert payloads(first) == [study.instances[0][2]]
        # Its parts name no URL: nothing is rewritten, the length is kept (SPEC 2).
        assert int(first.headers["Content-Length"]) == len(first.body)
    if resource == "frame":
        # Orthanc names each frame's URL in its part headers: rewritten, so re-framed.
        assert "Content-Length" not in first.headers
        assert f"Content-Location: {proxy.dicomweb}/studies/".encode() in first.body
    for answer in (first, second):  # part headers included
        assert_no_leak(answer, (f"127.0.0.1:{orthanc.port}", "localhost"))


@pytest.mark.parametrize("client", ["curl", "requests"])
async def test_public_url_in_every_announced_url(
    orthanc: Orthanc,
    study: Study,
    start_proxy: Callable[..., ProxyThread],
    session: aiohttp.ClientSession,
    client: str,
) -> None:
    public = "https://pacs.example.org/dicom-web"
    proxy = start_proxy(orthanc.dicomweb, public_url=public)
    resources = orthanc_resources(study)
    for name in ("qido", "study metadata", "instance metadata"):
        relative, accept = resources[name]
        answer = await get(session, proxy.dicomweb + relative, accept, CLIENT_CODINGS[client])
        assert answer.status == 200
        assert_coding(answer, textual=True, client=client)
        found = announced_urls(json.loads(answer.body))
        assert found and all(url.startswith(public + "/") for url in found), (name, found)
        assert_no_leak(answer, (f"127.0.0.1:{orthanc.port}", "localhost"))


@pytest.fixture(scope="module")
def balanced_orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    # An archive behind a load balancer announces the balancer's name in its URLs; the
    # DICOMweb plugin 1.7 has no PublicRoot option, Host and Ssl are its way.
    server = Orthanc(
        tmp_path_factory.mktemp("orthanc-lb"),
        changes={"DicomWeb": {"Host": "pacs-lb.internal:8042", "Ssl": True}},
    ).start()
    yield server
    server.stop()


@pytest.mark.parametrize("client", list(CLIENT_CODINGS))
async def test_archive_behind_a_balancer_every_url_rewritten(
    balanced_orthanc: Orthanc,
    start_proxy: Callable[..., ProxyThread],
    session: aiohttp.ClientSession,
    client: str,
) -> None:
    study = make_study(series_count=1, instances_per_series=2)
    for _, _, data in study.instances:
        balanced_orthanc.upload(data)
    proxy = start_proxy(balanced_orthanc.dicomweb, qido_ttl=60)
    announced = b"https://pacs-lb.internal:8042/dicom-web"
    resources = orthanc_resources(study)
    for name in ("qido", "study metadata", "series metadata", "instance metadata"):
        relative, accept = resources[name]
        direct = await get(session, balanced_orthanc.dicomweb + relative, accept)
        assert announced + b"/studies/" in direct.raw  # premise: the balancer's name
        url = proxy.dicomweb + relative
        first = await get(session, url, accept, CLIENT_CODINGS[client])
        await settle(proxy.app)
        second = await get(session, url, accept, CLIENT_CODINGS[client])
        assert (first.x_cache, second.x_cache) == ("MISS", "HIT"), name
        for answer in (first, second):
            assert_coding(answer, textual=True, client=client)
            assert_no_leak(answer, ("pacs-lb.internal", f"127.0.0.1:{balanced_orthanc.port}"))
            assert answer.body == direct.raw.replace(announced, proxy.dicomweb.encode())
            found = announced_urls(json.loads(answer.body))
            assert found and all(url.startswith(proxy.dicomweb + "/") for url in found)


# -- 3. a gateway's answer that is not the representation asked for ---------------------

PAGES = 2
WRONG_ANSWERS = {
    "login page for an instance": ("instance", "text/html", b"<html>login</html>"),
    "gateway error for an instance": ("instance", "text/plain", b"502 archive asleep"),
    "JSON for a multipart request": ("instance", "application/json", b'{"error": "expired"}'),
    "gateway error for metadata": ("metadata", "text/plain", b"upstream connect error"),
}


@pytest.mark.parametrize("case", list(WRONG_ANSWERS))
async def test_an_answer_not_asked_for_is_relayed_counted_never_stored(
    relay: FakeUpstream,
    proxy_on: ProxyOn,
    session: aiohttp.ClientSession,
    study: Study,
    caplog: pytest.LogCaptureFixture,
    case: str,
) -> None:
    kind, content_type, page = WRONG_ANSWERS[case]
    # A gateway before the archive answers complete 200s that are not the representation
    # asked for (a login page, a text/plain error), each with its ETag, before it relays.
    pages = [
        Answer(body=page, headers={"Content-Type": content_type, "ETag": f'"page-{number}"'})
        for number in range(1, PAGES + 1)
    ]
    relay.route("GET", "/{path:.*}", first=pages)
    proxy = await proxy_on(relay.dicomweb)
    metrics = proxy.app[METRICS]
    series, sop, data = study.instances[0]
    path = f"/dicom-web/studies/{study.uid}/series/{series}/instances/{sop}"
    path, accept = (path + "/metadata", JSON) if kind == "metadata" else (path, DICOM)
    url = root(proxy) + path

    etags: list[str] = []
    with caplog.at_level(logging.WARNING, logger="dicomweb_proxy"):
        for number in range(1, PAGES + 1):
            conditional = {"If-None-Match": etags[-1]} if etags else {}
            answer = await get(session, url, accept, "gzip, deflate", conditional)
            await settle(proxy.app)
            assert (answer.status, answer.x_cache) == (200, "MISS"), number
            assert answer.headers["Content-Type"].split(";")[0] == content_type
            assert answer.body == page
            assert relay.paths[path] == number  # reached the upstream again
            assert metrics.value(NOT_STORED, reason="unexpected_type") == number
            etags.append(answer.headers.get("ETag", '"none"'))
    warned = [r.getMessage() for r in caplog.records if "not cached" in r.getMessage()]
    assert len(warned) == PAGES and all("unexpected_type" in line for line in warned), warned

    # The gateway now lets the archive answer: that representation is stored.
    real = await get(session, url, accept, "gzip, deflate")
    await settle(proxy.app)
    hit = await get(session, url, accept, "gzip, deflate")
    assert (real.status, real.x_cache, hit.status, hit.x_cache) == (200, "MISS", 200, "HIT")
    assert relay.paths[path] == PAGES + 1
    if kind == "metadata":
        assert json.loads(real.body)[0]["00080018"]["Value"] == [sop]
        assert hit.body == real.body
    else:
        assert payloads(real) == payloads(hit) == [data]
    for old in etags:  # no validator of a page the proxy relayed matches what it stored
        again = await get(session, url, accept, "gzip, deflate", {"If-None-Match": old})
        assert (again.status, again.x_cache) == (200, "HIT")
    again = await get(session, url, accept, "gzip, deflate", {"If-None-Match": hit.headers["ETag"]})
    assert (again.status, again.x_cache) == (304, "HIT")
    assert relay.paths[path] == PAGES + 1
    assert metrics.value(NOT_STORED, reason="unexpected_type") == PAGES
    assert metrics.value(NOT_STORED, reason="undecodable") == 0


# -- 4. a coding the proxy cannot decode ------------------------------------------------


@pytest.mark.parametrize("client", ["curl", "chromium"])
@pytest.mark.parametrize("coding", ["compress", "br", "zstd"])
async def test_undecodable_coding_relayed_as_it_came_never_stored(
    fake: FakeUpstream,
    proxy_on: ProxyOn,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    coding: str,
    client: str,
) -> None:
    if DECODERS.get(coding) is not None:
        # Its library is installed here: take it away, as on a machine without it.
        monkeypatch.setitem(DECODERS, coding, None)
    # Not valid in any coding; an upstream URL inside must not be rewritten either.
    body = b"\x1f\x9d\x90" + f'["{FOREIGN}/studies/1.2.3"'.encode() + bytes(range(256))
    path = "/dicom-web/studies/1.2.3/series/1.2.3.1/instances/1.2.3.1.1/metadata"
    fake.route(
        "GET", path, Answer(body=body, headers={"Content-Type": JSON, "Content-Encoding": coding})
    )
    proxy = await proxy_on(fake.dicomweb)
    with caplog.at_level(logging.WARNING, logger="dicomweb_proxy"):
        for number in (1, 2):
            answer = await get(session, root(proxy) + path, JSON, CLIENT_CODINGS[client])
            await settle(proxy.app)
            assert (answer.status, answer.x_cache) == (200, "MISS"), number
            assert answer.headers["Content-Encoding"] == coding
            assert answer.headers["Content-Type"] == JSON
            assert answer.raw == body
            assert fake.count() == number  # reached the upstream again
    assert [r.headers.get("Accept-Encoding") for r in fake.received] == ["gzip", "gzip"]
    metrics = proxy.app[METRICS]
    assert metrics.value(NOT_STORED, reason="undecodable") == 2
    assert metrics.value(NOT_STORED, reason="unexpected_type") == 0
    warned = [r.getMessage() for r in caplog.records if "not cached" in r.getMessage()]
    assert len(warned) == 2 and all("undecodable" in line for line in warned), warned


async def test_undecodable_multipart_relayed_whole_never_stored(
    fake: FakeUpstream,
    proxy_on: ProxyOn,
    session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One completeness rule (proxy.dicomweb.ending): a coded multipart body is not
    judged by its close delimiter, which its coded bytes cannot show; the fill used to
    judge it anyway and cut the client off at its end."""
    monkeypatch.setitem(DECODERS, "compress", None)
    body = b"\x1f\x9d\x90" + bytes(range(256)) * 64  # no --boundary-- in sight
    path = "/dicom-web/studies/1.2.3/series/1.2.3.1/instances/1.2.3.1.1"
    content_type = f"{DICOM}; boundary=abc"

    headers = {"Content-Type": content_type, "Content-Encoding": "compress"}
    fake.route("GET", path, Answer(body=body, headers=headers))
    proxy = await proxy_on(fake.dicomweb)
    for number in (1, 2):
        answer = await get(session, root(proxy) + path, DICOM)
        await settle(proxy.app)
        assert (answer.status, answer.x_cache) == (200, "MISS"), number
        assert answer.headers["Content-Encoding"] == "compress"
        assert answer.raw == body
    assert proxy.app[METRICS].value(NOT_STORED, reason="undecodable") == 2


def encoded(coding: str, body: bytes) -> bytes:
    if coding in {"gzip", "x-gzip"}:
        return gzip.compress(body)
    if coding == "deflate":
        return zlib.compress(body)
    if coding == "raw deflate":  # RFC 1951 without the RFC 1950 wrapper, as IIS sends it
        packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        return packer.compress(body) + packer.flush()
    if coding == "br":
        return bytes(pytest.importorskip("brotli").compress(body, quality=5))  # 11: seconds
    zstd = pytest.importorskip("backports.zstd")
    return bytes(zstd.compress(body))


@pytest.mark.parametrize("client", ["curl", "chromium"])
@pytest.mark.parametrize("coding", ["x-gzip", "deflate", "raw deflate", "br", "zstd"])
async def test_every_known_coding_decoded_rewritten_and_stored(
    fake: FakeUpstream,
    proxy_on: ProxyOn,
    session: aiohttp.ClientSession,
    coding: str,
    client: str,
) -> None:
    """Whatever the upstream sends anyway (SPEC section 2): decoded when the proxy can."""
    study = "1.2.3.6"
    path = f"/dicom-web/studies/{study}/series/{study}.1/instances/{study}.1.1/metadata"
    body = encoded(coding, metadata_body(study, fake.dicomweb, FOREIGN))
    name = "deflate" if coding == "raw deflate" else coding
    fake.route(
        "GET", path, Answer(body=body, headers={"Content-Type": JSON, "Content-Encoding": name})
    )
    proxy = await proxy_on(fake.dicomweb)
    expected = metadata_body(study, f"{root(proxy)}/dicom-web", f"{root(proxy)}/dicom-web")
    first = await get(session, root(proxy) + path, JSON, CLIENT_CODINGS[client])
    await settle(proxy.app)
    second = await get(session, root(proxy) + path, JSON, CLIENT_CODINGS[client])
    assert (first.status, first.x_cache, second.status, second.x_cache) == (200, "MISS", 200, "HIT")
    for answer in (first, second):
        assert_coding(answer, textual=True, client=client)
        assert answer.body == expected
        assert_no_leak(answer, (f"127.0.0.1:{fake.port}", "archive.internal"))
    assert proxy.app[METRICS].total(NOT_STORED) == 0


# -- 5. gzip cut short or corrupt -------------------------------------------------------


def gzipped(body: bytes, content_type: str, mode: str) -> Answer:
    """``body`` gzipped by hand: ``whole`` (close-delimited, every byte), ``cut``
    (close-delimited, half the gzip bytes), ``bad-crc`` (Content-Length, the gzip
    trailer's CRC-32 wrong), ``corrupt`` (Content-Length, 64 bytes inside the deflate
    stream flipped)."""
    coded = gzip.compress(body)
    answer = Answer(body=coded, headers={"Content-Type": content_type, "Content-Encoding": "gzip"})
    if mode == "whole":
        return replace(answer, framing="close")
    if mode == "cut":
        return replace(answer, framing="close", drop_after=len(coded) // 2)
    if mode == "bad-crc":
        crc = bytes(byte ^ 0xFF for byte in coded[-8:-4])
        return replace(answer, body=coded[:-8] + crc + coded[-4:])
    middle = len(coded) // 2
    flipped = bytes(byte ^ 0x55 for byte in coded[middle : middle + 64])
    return replace(answer, body=coded[:middle] + flipped + coded[middle + 64 :])


@pytest.mark.parametrize("client", ["curl", "requests"])
@pytest.mark.parametrize("kind", ["metadata", "instance"])
@pytest.mark.parametrize("mode", ["cut", "bad-crc", "corrupt"])
async def test_broken_gzip_cuts_the_client_and_is_never_stored(
    fake: FakeUpstream,
    proxy_on: ProxyOn,
    session: aiohttp.ClientSession,
    mode: str,
    kind: str,
    client: str,
) -> None:
    """``cut``: close-delimited, so only the end of the gzip stream tells it is whole."""
    study = "1.2.3.5"
    path = f"/dicom-web/studies/{study}/series/{study}.1/instances/{study}.1.1"
    if kind == "metadata":
        body, content_type, accept = metadata_body(study, fake.dicomweb, FOREIGN), JSON, JSON
        path += "/metadata"
    else:
        body = instance_body(study, f"{study}.1", f"{study}.1.1")
        content_type, accept = INSTANCE_TYPE, DICOM
    broken = gzipped(body, content_type, mode)
    # Then close-delimited too, but its gzip stream ends.
    fake.route("GET", path, gzipped(body, content_type, "whole"), first=[broken, broken])
    proxy = await proxy_on(fake.dicomweb)
    public = f"{root(proxy)}/dicom-web"
    expected = body.replace(fake.dicomweb.encode(), public.encode())
    expected = expected.replace(FOREIGN.encode(), public.encode())
    headers = {"Accept": accept}
    if CLIENT_CODINGS[client] is not None:
        headers["Accept-Encoding"] = str(CLIENT_CODINGS[client])
    for attempt in (1, 2):
        async with session.get(root(proxy) + path, headers=headers) as response:
            assert (response.status, response.headers["X-Cache"]) == (200, "MISS")
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()
        await settle(proxy.app)
        assert fake.count() == attempt  # nothing stored: the upstream is asked again
    whole = await get(session, root(proxy) + path, accept, CLIENT_CODINGS[client])
    await settle(proxy.app)
    hit = await get(session, root(proxy) + path, accept, CLIENT_CODINGS[client])
    assert (whole.status, whole.x_cache, hit.status, hit.x_cache) == (200, "MISS", 200, "HIT")
    assert whole.body == hit.body == expected
    assert fake.count() == 3
    metrics = proxy.app[METRICS]
    assert metrics.total(NOT_STORED) == 0  # an error, not a refused representation


# -- 6. dicomweb-client (requests: Accept-Encoding gzip) --------------------------------


async def test_dicomweb_client_second_retrieves_never_reach_the_archive(
    relay: FakeUpstream,
    orthanc: Orthanc,
    study: Study,
    start_proxy: Callable[..., ProxyThread],
    request: pytest.FixtureRequest,
) -> None:
    assert "gzip" in requests.utils.default_headers()["Accept-Encoding"]  # premise
    proxy = start_proxy(relay.dicomweb)
    http = requests.Session()
    request.addfinalizer(http.close)
    client = DICOMwebClient(url=proxy.dicomweb, session=http)
    series, sop, data = study.instances[0]
    metadata_path = f"/dicom-web/studies/{study.uid}/metadata"
    instance_path = f"/dicom-web/studies/{study.uid}/series/{series}/instances/{sop}"

    # The synchronous client runs in a thread, so that the proxy's test loop stays free.
    metadata = []
    for _ in range(2):
        metadata.append(await asyncio.to_thread(client.retrieve_study_metadata, study.uid))
        await settle(proxy.app)
    assert metadata[0] == metadata[1] and len(metadata[0]) == 6
    assert relay.paths[metadata_path] == 1
    instances = []
    for _ in range(2):
        instances.append(await asyncio.to_thread(client.retrieve_instance, study.uid, series, sop))
        await settle(proxy.app)
    assert relay.paths[instance_path] == 1
    expected = pydicom.dcmread(io.BytesIO(data)).PixelData
    assert [ds.PixelData for ds in instances] == [expected, expected]
    assert proxy.app is not None
    metrics = proxy.app[METRICS]
    assert metrics.value("dicomweb_proxy_cache_requests_total", result="miss") == 2
    assert metrics.value("dicomweb_proxy_cache_requests_total", result="hit") == 2

    found = await asyncio.to_thread(
        client.search_for_studies, search_filters={"StudyInstanceUID": study.uid}
    )
    assert [item["0020000D"]["Value"][0] for item in found] == [study.uid]
    text = json.dumps([found, metadata[0]])
    for leak in (f"127.0.0.1:{orthanc.port}", f"127.0.0.1:{relay.port}", "localhost"):
        assert leak not in text, leak
    assert announced_urls(found) and announced_urls(metadata[0])
