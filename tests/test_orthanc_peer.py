"""Orthanc itself as a DICOMweb client of the proxy (SPEC sections 2, 3 and 5).

A "site" Orthanc whose DICOMweb plugin lists the proxy as a remote server pushes,
pulls and queries through it, in front of the session's "archive" Orthanc.  The site
is a real peer: it writes 73-character multipart boundaries and chunked STOW bodies,
asks for retrieves with ``transfer-syntax=*`` and reads the RetrieveURLs it is given.
Orthanc's peer API (DICOMweb plugin 1.7) is used as an operator would:

- ``POST /dicom-web/servers/proxy/stow``      ``{"Resources": [<Orthanc id>], ...}``
- ``POST /dicom-web/servers/proxy/retrieve``  ``{"Resources": [{"Study": <UID>}], ...}``
- ``POST /dicom-web/servers/proxy/qido`` and ``/get``  ``{"Uri": ..., "Arguments": {...}}``

stow and retrieve run as Orthanc jobs; with ``"Synchronous": false`` they answer a job
id at once and ``GET /jobs/{id}`` tells how the job ended.
"""

from __future__ import annotations

import io
import json
import urllib.error
from collections.abc import Callable, Iterator
from typing import Any

import pydicom
import pytest

from harness.dicomgen import Study, make_study
from harness.net import free_port
from harness.orthanc import Orthanc
from tests.fake_upstream import FakeUpstream
from tests.support import ProxyThread, eventually

JOB_TIMEOUT = 20.0


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def proxy_port() -> int:
    """One port for every proxy of this module: the site names it in its configuration."""
    return free_port()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, proxy_port: int) -> Iterator[Orthanc]:
    """The site Orthanc, on the shipped configuration plus its one remote server."""
    changes = {
        # The site's DICOMweb client pushes to, pulls from and queries the proxy.
        "DicomWeb": {"Servers": {"proxy": [f"http://127.0.0.1:{proxy_port}/dicom-web/"]}},
    }
    server = Orthanc(tmp_path_factory.mktemp("site"), changes=changes).start()
    yield server
    server.stop()


@pytest.fixture
def site_proxy(
    start_proxy: Callable[..., ProxyThread], proxy_port: int
) -> Callable[..., ProxyThread]:
    """Start the proxy the site is configured to talk to, in front of ``upstream_url``."""

    def start(upstream_url: str, **overrides: Any) -> ProxyThread:
        # The port the site's configuration names (a fresh proxy per test, one site).
        return start_proxy(upstream_url, listen=f"127.0.0.1:{proxy_port}", **overrides)

    return start


# -- the site's peer API ---------------------------------------------------------------


def peer_call(site: Orthanc, path: str, payload: dict[str, Any]) -> Any:
    """One call of the site's REST API; a failure shows Orthanc's explanation."""
    try:
        return site.post_json(path, payload)
    except urllib.error.HTTPError as exc:
        pytest.fail(f"POST {path} {json.dumps(payload)}: {exc.code} {exc.read().decode()}")


def peer_call_raw(site: Orthanc, path: str, payload: dict[str, Any]) -> bytes:
    """Like :func:`peer_call`, for ``/get``, whose answer is the remote body as sent."""
    try:
        return site.request("POST", path, json.dumps(payload).encode(), "application/json")
    except urllib.error.HTTPError as exc:
        pytest.fail(f"POST {path} {json.dumps(payload)}: {exc.code} {exc.read().decode()}")


def run_job(site: Orthanc, path: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Start a stow/retrieve job on the site and wait (polling, bounded) until it ends."""
    job_id = peer_call(site, path, {**payload, "Synchronous": False})["ID"]

    def ended() -> dict[str, Any] | None:
        job: dict[str, Any] = site.get_json(f"/jobs/{job_id}")
        return job if job["State"] in {"Success", "Failure"} else None

    return eventually(
        ended, timeout=JOB_TIMEOUT, interval=0.05, message=f"job {job_id} of {path} did not end"
    )


def orthanc_study_id(server: Orthanc, study_uid: str) -> str:
    """Orthanc's own identifier of a study, which its REST API addresses."""
    found = json.loads(server.request("POST", "/tools/lookup", study_uid.encode(), "text/plain"))
    ids = [item["ID"] for item in found if item["Type"] == "Study"]
    assert len(ids) == 1, found
    return str(ids[0])


def upload(server: Orthanc, study: Study) -> None:
    for _, _, data in study.instances:
        server.upload(data)


def sop_uids(study: Study) -> list[str]:
    return sorted(sop_uid for _, sop_uid, _ in study.instances)


def strings_in(value: object) -> Iterator[str]:
    """Every string anywhere in a decoded JSON answer (keys included)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)


def tag_value(item: dict[str, Any], tag: str) -> Any:
    """A tag's value in either shape: DICOM JSON (``/get``) or Orthanc's (``/qido``)."""
    value = item[tag]["Value"]
    return value[0] if isinstance(value, list) else value


# -- tests -----------------------------------------------------------------------------


def test_site_pushes_a_study_through_the_proxy_in_batches(
    site: Orthanc, site_proxy: Callable[..., ProxyThread], relay: FakeUpstream, orthanc: Orthanc
) -> None:
    study = make_study(2, 6, rows=64, columns=64)
    upload(site, study)
    # Small batches, so twelve instances must be split into several upstream STOWs.
    site_proxy(relay.dicomweb, stow_max_instances=5)

    job = run_job(
        site, "/dicom-web/servers/proxy/stow", {"Resources": [orthanc_study_id(site, study.uid)]}
    )

    assert job["State"] == "Success", job
    assert job["Content"]["InstancesCount"] == "12", job
    assert orthanc.study_instance_count(study.uid) == 12
    batches = [r for r in relay.received if r.method == "POST"]
    assert [batch.path for batch in batches] == ["/dicom-web/studies"] * len(batches)
    assert all(batch.status == 200 for batch in batches), [b.status for b in batches]
    assert all(len(batch.parts()) <= 5 for batch in batches), [len(b.parts()) for b in batches]
    sent = [
        pydicom.dcmread(io.BytesIO(part.body), stop_before_pixels=True).SOPInstanceUID
        for batch in batches
        for part in batch.parts()
    ]
    assert sorted(sent) == sop_uids(study)  # every instance once: nothing lost, no replay


def test_site_pulls_a_study_and_a_second_pull_comes_from_the_cache(
    site: Orthanc, site_proxy: Callable[..., ProxyThread], relay: FakeUpstream, orthanc: Orthanc
) -> None:
    study = make_study(2, 3)
    upload(orthanc, study)
    site_proxy(relay.dicomweb)
    pull = {"Resources": [{"Study": study.uid}]}
    study_path = f"/dicom-web/studies/{study.uid}"

    def fetched_from_archive(since: int) -> list[str]:
        """Paths of retrieves for this study that reached the archive."""
        return [r.path for r in relay.received[since:] if r.path.startswith(study_path)]

    first = run_job(site, "/dicom-web/servers/proxy/retrieve", pull)
    assert first["State"] == "Success", first
    assert site.study_instance_count(study.uid) == 6
    assert fetched_from_archive(0), [r.path for r in relay.received]

    site.request("DELETE", f"/studies/{orthanc_study_id(site, study.uid)}")
    assert site.study_instance_count(study.uid) == 0
    before_second = len(relay.received)
    second = run_job(site, "/dicom-web/servers/proxy/retrieve", pull)

    assert second["State"] == "Success", second
    assert second["Content"]["ReceivedInstancesCount"] == "6", second
    assert site.study_instance_count(study.uid) == 6
    assert fetched_from_archive(before_second) == [], [r.path for r in relay.received]


def test_site_queries_and_every_url_it_is_given_names_the_proxy(
    site: Orthanc, site_proxy: Callable[..., ProxyThread], orthanc: Orthanc
) -> None:
    study = make_study(2, 1)
    upload(orthanc, study)
    # Straight in front of the archive, which announces http://localhost/dicom-web/...
    proxy = site_proxy(orthanc.dicomweb)
    query = {"Uri": "/studies", "Arguments": {"StudyInstanceUID": study.uid}}
    series_query = {"Uri": f"/studies/{study.uid}/series", "Arguments": {}}

    interpreted = peer_call(site, "/dicom-web/servers/proxy/qido", query)
    raw = json.loads(peer_call_raw(site, "/dicom-web/servers/proxy/get", query))
    series = json.loads(peer_call_raw(site, "/dicom-web/servers/proxy/get", series_query))

    study_url = f"{proxy.dicomweb}/studies/{study.uid}"
    for answer in (interpreted, raw):
        assert [tag_value(item, "0020000D") for item in answer] == [study.uid], answer
        assert [tag_value(item, "00081190") for item in answer] == [study_url], answer
    assert sorted(tag_value(item, "00081190") for item in series) == sorted(
        f"{study_url}/series/{series_uid}" for series_uid in study.series
    )
    urls = [s for s in strings_in([interpreted, raw, series]) if "://" in s]
    assert urls and all(url.startswith(proxy.dicomweb + "/") for url in urls), urls
    for text in strings_in([interpreted, raw, series]):
        assert f":{orthanc.port}" not in text and "localhost" not in text, text
