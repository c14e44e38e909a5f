"""Upstream Basic auth against a real Orthanc with ``AuthenticationEnabled``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from requests import HTTPError

from harness.dicomgen import Study, make_study
from harness.orthanc import Orthanc
from proxy.cli import main
from tests.fake_upstream import Answer, FakeUpstream
from tests.support import ProxyThread, multipart_stow

PASSWORD = "orthanc-pw-7f3e"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path_factory.mktemp("orthanc-auth"), users={"alice": PASSWORD}).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def guarded_study(guarded: Orthanc) -> Study:
    created = make_study(series_count=1, instances_per_series=2)
    for _, _, data in created.instances:
        guarded.upload(data)
    return created


@pytest.fixture
def password_file(tmp_path: Path, secrets_checked: set[str]) -> Path:
    secrets_checked.add(PASSWORD)
    path = tmp_path / "password"
    path.write_text(PASSWORD + "\n")
    return path


def test_basic_credentials_open_a_guarded_orthanc(
    guarded: Orthanc,
    guarded_study: Study,
    start_proxy: Callable[..., ProxyThread],
    password_file: Path,
) -> None:
    proxy = start_proxy(
        guarded.dicomweb,
        upstream_auth="basic",
        upstream_username="alice",
        upstream_password_file=str(password_file),
    )
    client = DICOMwebClient(url=proxy.dicomweb)
    found = client.search_for_studies(search_filters={"StudyInstanceUID": guarded_study.uid})
    assert [item["0020000D"]["Value"][0] for item in found] == [guarded_study.uid]
    series_uid, sop_uid, _ = guarded_study.instances[0]
    assert (
        client.retrieve_instance(guarded_study.uid, series_uid, sop_uid).SOPInstanceUID == sop_uid
    )


def test_without_upstream_auth_the_orthanc_401_passes_through(
    guarded: Orthanc, start_proxy: Callable[..., ProxyThread]
) -> None:
    proxy = start_proxy(guarded.dicomweb)
    with pytest.raises(HTTPError) as caught:
        DICOMwebClient(url=proxy.dicomweb).search_for_studies()
    assert getattr(caught.value.response, "status_code", None) == 401


def test_passthrough_forwards_the_clients_basic_credentials(
    guarded: Orthanc, start_proxy: Callable[..., ProxyThread], secrets_checked: set[str]
) -> None:
    secrets_checked.add(PASSWORD)
    proxy = start_proxy(guarded.dicomweb, upstream_auth="passthrough")
    session = requests.Session()
    session.auth = ("alice", PASSWORD)
    assert isinstance(
        DICOMwebClient(url=proxy.dicomweb, session=session).search_for_studies(), list
    )
    with pytest.raises(HTTPError) as caught:
        DICOMwebClient(url=proxy.dicomweb).search_for_studies()
    assert getattr(caught.value.response, "status_code", None) == 401


async def test_check_against_a_guarded_orthanc(
    guarded: Orthanc,
    password_file: Path,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    base = ["check", "--upstream-url", guarded.dicomweb, "--data-dir", str(tmp_path / "d")]
    good = [*base, "--upstream-auth", "basic", "--upstream-username", "alice",
            "--upstream-password-file", str(password_file)]  # fmt: skip
    assert await asyncio.to_thread(main, good) == 0
    assert "upstream auth: ok (basic as user 'alice'" in capfd.readouterr().out
    wrong = password_file.with_name("wrong")
    wrong.write_text("not-the-password")
    bad = [*good[:-1], str(wrong)]
    assert await asyncio.to_thread(main, bad) == 1
    out = capfd.readouterr().out
    assert "upstream: FAILED (the upstream rejected the credentials: HTTP 401)" in out
    assert PASSWORD not in out


def test_passthrough_partitions_the_cache_per_credential(
    guarded: Orthanc,
    guarded_study: Study,
    start_proxy: Callable[..., ProxyThread],
    secrets_checked: set[str],
) -> None:
    """An instance alice fetched is never served from the cache to another credential."""
    secrets_checked.add(PASSWORD)
    proxy = start_proxy(guarded.dicomweb, upstream_auth="passthrough")
    series_uid, sop_uid, _ = guarded_study.instances[0]
    url = f"{proxy.dicomweb}/studies/{guarded_study.uid}/series/{series_uid}/instances/{sop_uid}"
    alice = requests.get(url, auth=("alice", PASSWORD), timeout=30)
    assert alice.status_code == 200 and alice.headers["X-Cache"] == "MISS"
    for _ in range(50):  # the fill commits right after the last byte
        again = requests.get(url, auth=("alice", PASSWORD), timeout=30)
        if again.headers["X-Cache"] == "HIT":
            break
    assert again.headers["X-Cache"] == "HIT" and again.content == alice.content
    mallory = requests.get(url, auth=("mallory", "guess"), timeout=30)
    assert mallory.status_code == 401
    assert mallory.headers.get("X-Cache") == "MISS"
    anonymous = requests.get(url, timeout=30)
    assert anonymous.status_code == 401


def test_dead_letter_replay_from_the_cli_signs_in_upstream(
    guarded: Orthanc,
    fake: FakeUpstream,
    start_proxy: Callable[..., ProxyThread],
    password_file: Path,
) -> None:
    """``dicomweb-proxy dead-letter replay`` takes the same upstream options as serve
    and uses them: a guarded archive gets the kept instances."""
    fake.origin = guarded.url
    down = fake.route("POST", "/dicom-web/studies", Answer(503, "busy", {"Retry-After": "0"}))
    auth = {
        "upstream_auth": "basic",
        "upstream_username": "alice",
        "upstream_password_file": str(password_file),
    }
    proxy = start_proxy(fake.dicomweb, stow_retries=1, stow_retry_delay=0.001, **auth)
    study = make_study(1, 2, rows=16, columns=16)
    body, content_type = multipart_stow(study, "b")
    headers = {"Content-Type": content_type}
    assert requests.post(proxy.dicomweb + "/studies", data=body, headers=headers).status_code == 409
    fake.routes.remove(down)  # the archive is back
    args = ["dead-letter", "replay", "--all", "--upstream-url", fake.dicomweb]
    args += ["--upstream-auth", "basic", "--upstream-username", "alice"]
    args += ["--upstream-password-file", str(password_file)]
    assert main([*args, "--data-dir", proxy.settings.data_dir]) == 0
    assert guarded.study_instance_count(study.uid) == 2
    assert fake.received[-1].headers.get("Authorization", "").startswith("Basic ")
