"""``--upstream-auth google``: google-auth's real service-account and metadata-server
code paths against emulators that verify what Google verifies (tests/cloudservers.py)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from harness.dicomgen import Study, make_study
from proxy.auth import google
from proxy.cli import main
from proxy.errors import UpstreamAuthFailed
from proxy.upstream import Upstream
from tests.auth.conftest import Clock, Serve, settings_for
from tests.cloudservers import (
    GoogleMetadataServer,
    GoogleTokenEndpoint,
    Issuer,
    serve_study,
    service_account_key,
)
from tests.fake_upstream import FakeUpstream
from tests.support import ProxyThread, multipart_stow

# main(["check", ...]) configures the root logger; the tests after must not inherit it.

SCOPE = "https://www.googleapis.com/auth/cloud-healthcare"
STORE = "/v1/projects/p/locations/us/datasets/d/dicomStores/s/dicomWeb"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_ambient_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GOOGLE_APPLICATION_CREDENTIALS", "GCE_METADATA_HOST", "GCE_METADATA_ROOT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def key_endpoint(
    serve: Serve, tmp_path: Path, secrets_checked: set[str]
) -> AsyncIterator[tuple[GoogleTokenEndpoint, Path]]:
    """A token endpoint and a service-account key file whose token_uri names it."""
    endpoint = GoogleTokenEndpoint(b"", "", SCOPE)
    endpoint.url = await serve(endpoint.app) + "/token"
    key_file = tmp_path / "service-account.json"
    info, public = google_key(key_file, endpoint.url)
    endpoint.public_key, endpoint.email = public, info["client_email"]
    yield endpoint, key_file
    secrets_checked.add(info["private_key"].splitlines()[1])
    secrets_checked.update(endpoint.tokens.issued)
    secrets_checked.update(endpoint.assertions)


def google_key(path: Path, token_uri: str) -> tuple[dict[str, str], bytes]:
    return service_account_key(path, token_uri)


@pytest.fixture
def archived() -> Study:
    return make_study(1, 5, rows=16, columns=16)


def origin_for(tokens: Issuer, fake: FakeUpstream, study: Study) -> FakeUpstream:
    """The fake upstream as the Healthcare API's DICOM store, admitting live tokens."""
    serve_study(fake, study, tokens.bearer_check)
    fake.base_path = STORE
    return fake


async def qido(upstream: Upstream) -> int:
    async with upstream.request("GET", upstream.base / "studies", {}) as response:
        return response.status


async def wave(upstream: Upstream) -> list[int]:
    return list(await asyncio.gather(*(qido(upstream) for _ in range(32))))


async def test_key_file_tokens_are_verified_and_refreshed_once_for_32_requests(
    key_endpoint: tuple[GoogleTokenEndpoint, Path],
    fake: FakeUpstream,
    archived: Study,
    clock: Clock,
    tmp_path: Path,
) -> None:
    endpoint, key_file = key_endpoint
    endpoint.delay = 0.2  # the refresh is in flight while the others arrive
    origin = origin_for(endpoint.tokens, fake, archived)
    settings = settings_for(
        origin.dicomweb, tmp_path, upstream_auth="google", google_credentials_file=str(key_file)
    )
    upstream = Upstream(settings, google.credentials_from(settings, {}, clock=clock))
    try:
        assert await wave(upstream) == [200] * 32
        assert endpoint.calls == 1
        clock.advance(3600 - 59)  # expired, less the refresh margin
        assert await wave(upstream) == [200] * 32
        assert endpoint.calls == 2
        endpoint.tokens.live.clear()  # revoked: one refresh on the 401, the request retried
        assert await wave(upstream) == [200] * 32
        assert endpoint.calls == 3
    finally:
        await upstream.close()
    assert origin.refused.count("not a live token") >= 1


async def test_a_key_the_endpoint_does_not_trust_is_named(
    key_endpoint: tuple[GoogleTokenEndpoint, Path],
    fake: FakeUpstream,
    archived: Study,
    tmp_path: Path,
) -> None:
    endpoint, key_file = key_endpoint
    _, endpoint.public_key = google_key(tmp_path / "other.json", endpoint.url)  # another key
    origin = origin_for(endpoint.tokens, fake, archived)
    settings = settings_for(
        origin.dicomweb, tmp_path, upstream_auth="google", google_credentials_file=str(key_file)
    )
    upstream = Upstream(settings, google.credentials_from(settings, {}))
    try:
        with pytest.raises(UpstreamAuthFailed) as caught:
            await qido(upstream)
    finally:
        await upstream.close()
    assert (
        str(caught.value)
        == "the Google token endpoint refused: invalid_grant: Invalid JWT Signature."
    )
    assert origin.received == []


async def test_metadata_server_is_asked_with_its_header_and_the_scope(
    serve: Serve,
    fake: FakeUpstream,
    archived: Study,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    secrets_checked: set[str],
) -> None:
    metadata = GoogleMetadataServer()
    host = (await serve(metadata.app)).removeprefix("http://")
    # google-auth reads GCE_METADATA_HOST once, when it is imported (the subprocess
    # test below sets the variable itself); here its module global is set instead.
    monkeypatch.setattr("google.auth.compute_engine._metadata._GCE_METADATA_HOST", host)
    origin = origin_for(metadata.tokens, fake, archived)
    settings = settings_for(origin.dicomweb, tmp_path, upstream_auth="google")
    credentials = google.credentials_from(settings, {"GCE_METADATA_HOST": host})
    upstream = Upstream(settings, credentials)
    try:
        assert await wave(upstream) == [200] * 32
    finally:
        await upstream.close()
    secrets_checked.update(metadata.tokens.issued)
    assert metadata.calls == 1 and metadata.scopes == [SCOPE]
    assert credentials.describe() == f"google metadata server at {host}"
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"http://{host}/computeMetadata/v1/instance/service-accounts/default/token"
        ) as response,
    ):
        assert response.status == 403  # the emulator, like the real one, wants the header


async def test_qido_wado_from_the_cache_and_stow_in_batches_through_the_proxy(
    key_endpoint: tuple[GoogleTokenEndpoint, Path],
    fake: FakeUpstream,
    archived: Study,
    start_proxy: Callable[..., ProxyThread],
) -> None:
    endpoint, key_file = key_endpoint
    origin = origin_for(endpoint.tokens, fake, archived)
    proxy = start_proxy(
        origin.dicomweb,
        upstream_auth="google",
        google_credentials_file=str(key_file),
        stow_max_instances=2,
    )
    await exercise(proxy, origin, archived)
    assert endpoint.calls == 1
    assert origin.refused == []


async def exercise(proxy: ProxyThread, origin: FakeUpstream, study: Study) -> None:
    """QIDO, WADO twice (the second from the cache), STOW of 5 instances in 2/2/1."""
    series, sop, data = study.instances[0]
    instance = f"{proxy.dicomweb}/studies/{study.uid}/series/{series}/instances/{sop}"
    accept = {"Accept": 'multipart/related; type="application/dicom"'}
    body, content_type = multipart_stow(study)
    async with aiohttp.ClientSession() as session:
        async with session.get(proxy.dicomweb + "/studies") as response:
            assert response.status == 200
        caches = []
        for _ in range(2):
            async with session.get(instance, headers=accept) as response:
                assert response.status == 200 and data in await response.read()
                caches.append(response.headers.get("X-Cache"))
        headers = {"Content-Type": content_type}
        async with session.post(
            proxy.dicomweb + "/studies", data=body, headers=headers
        ) as response:
            assert response.status == 200, await response.text()
    assert caches == ["MISS", "HIT"] and origin.count("/instances/") == 1
    stows = [r for r in origin.received if r.method == "POST" and not r.refused]
    # Sent --stow-concurrency at a time, so they may arrive in any order.
    assert sorted((len(r.parts()) for r in stows), reverse=True) == [2, 2, 1]


async def test_check_names_the_metadata_server_it_used(
    serve: Serve, fake: FakeUpstream, archived: Study, tmp_path: Path, secrets_checked: set[str]
) -> None:
    """A real process with GCE_METADATA_HOST set: google-auth honours it itself."""
    metadata = GoogleMetadataServer()
    host = (await serve(metadata.app)).removeprefix("http://")
    origin = origin_for(metadata.tokens, fake, archived)
    env = {"PATH": "/usr/bin:/bin", "GCE_METADATA_HOST": host}
    argv = [
        sys.executable,
        "-m",
        "proxy",
        "check",
        "--upstream-url",
        origin.dicomweb,
        "--upstream-auth",
        "google",
        "--data-dir",
        str(tmp_path / "data"),
    ]
    process = await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    out = (await asyncio.wait_for(process.communicate(), 60))[0].decode()
    secrets_checked.update(metadata.tokens.issued)
    assert process.returncode == 0, out
    assert f"upstream auth: ok (google metadata server at {host}: credential ready)" in out
    assert "qido: ok (1 study returned)" in out
    assert not any(token in out for token in metadata.tokens.issued)


async def test_check_names_the_key_file(
    key_endpoint: tuple[GoogleTokenEndpoint, Path],
    fake: FakeUpstream,
    archived: Study,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    endpoint, key_file = key_endpoint
    origin = origin_for(endpoint.tokens, fake, archived)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    argv = [
        "check",
        "--upstream-url",
        origin.dicomweb,
        "--upstream-auth",
        "google",
        "--data-dir",
        str(tmp_path / "data"),
    ]
    assert await asyncio.to_thread(main, argv) == 0
    out = capfd.readouterr().out
    assert (
        f"upstream auth: ok (google service account {endpoint.email} from key file {key_file}: "
        "credential ready)"
    ) in out


def test_a_broken_key_file_stops_start_up_naming_its_origin(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "key.json"
    broken.write_text('{"type": "service_account"}')
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(broken))
    assert (
        main(["serve", "--upstream-url", "http://127.0.0.1:9/x", "--upstream-auth", "google"]) == 2
    )
    err = capfd.readouterr().err
    assert err.startswith(
        f"dicomweb-proxy: GOOGLE_APPLICATION_CREDENTIALS: {broken} is not a usable"
    )
    assert err.count("\n") == 1


def test_a_missing_google_auth_stops_start_up_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "google.auth", None)
    assert (
        main(["serve", "--upstream-url", "http://127.0.0.1:9/x", "--upstream-auth", "google"]) == 2
    )
    assert capfd.readouterr().err == (
        "dicomweb-proxy: --upstream-auth google: the google-auth library is not installed "
        "(pip install 'dicomweb-proxy[google]')\n"
    )
