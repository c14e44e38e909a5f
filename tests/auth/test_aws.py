"""``--upstream-auth aws``: every request SigV4-signed, checked by an emulated
HealthImaging that recomputes each signature with botocore (tests/cloudservers.py)."""

from __future__ import annotations

import asyncio
import datetime
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import botocore.session
import pytest
from multidict import CIMultiDict
from yarl import URL

from harness.dicomgen import Study, make_study
from proxy.auth import aws, sigv4
from proxy.auth.credentials import Outgoing
from proxy.cli import main
from proxy.upstream import Upstream
from tests.auth.conftest import Serve, settings_for
from tests.cloudservers import AwsCredentialsEndpoint, AwsKey, SigV4Checker, serve_study
from tests.fake_upstream import FakeUpstream
from tests.support import ProxyThread, multipart_stow

# main(["check", ...]) configures the root logger; the tests after must not inherit it.

REGION = "eu-west-1"
STATIC = AwsKey("ASIAEXAMPLESTATIC01", "static-secret-5f0c9a1e7d", "session-token-static-8b2e41")
QUERY = {
    "PatientName": "DOE*",
    "includefield": "00080020,00080030",
    "TimezoneOffsetFromUTC": "+0100",
}


@pytest.fixture(autouse=True)
def aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Only what each test sets: no profile, no files, no instance metadata."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def checker(secrets_checked: set[str]) -> Iterator[SigV4Checker]:
    checker = SigV4Checker(REGION)
    checker.allow(STATIC)
    yield checker
    secrets_checked.update({STATIC.secret_key, STATIC.token or ""})
    secrets_checked.update(key.secret_key for key in checker.keys.values())
    secrets_checked.update(key.token or "" for key in checker.keys.values())


@pytest.fixture
def archived() -> Study:
    return make_study(1, 5, rows=16, columns=16)


@pytest.fixture
def origin(
    fake: FakeUpstream, checker: SigV4Checker, archived: Study, secrets_checked: set[str]
) -> Iterator[FakeUpstream]:
    """The fake upstream as HealthImaging: SigV4 checked, 403 when refused."""
    serve_study(fake, archived, checker, refusal=403)
    fake.base_path = "/datastore/4f1c0e6a"
    yield fake
    # Every signature the archive saw is a secret of its own: none may be logged.
    secrets_checked.update(r.headers.get("Authorization", "") for r in fake.received)


def use_static(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", STATIC.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", STATIC.secret_key)
    monkeypatch.setenv("AWS_SESSION_TOKEN", STATIC.token or "")


@pytest.fixture
async def pod_identity(
    checker: SigV4Checker,
    serve: Serve,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    secrets_checked: set[str],
) -> AsyncIterator[AwsCredentialsEndpoint]:
    """EKS Pod Identity: the agent's endpoint and the projected token file."""
    token_file = tmp_path / "eks-pod-identity-token"
    token_file.write_text("eks-pod-identity-token-7d1e")
    endpoint = AwsCredentialsEndpoint("eks-pod-identity-token-7d1e", checker)
    base = await serve(endpoint.app)
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", base + "/credentials")
    monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", str(token_file))
    yield endpoint
    secrets_checked.add("eks-pod-identity-token-7d1e")
    secrets_checked.update(endpoint.secrets())


def upstream_for(origin: FakeUpstream, tmp_path: Path, **options: object) -> Upstream:
    settings = settings_for(
        origin.dicomweb, tmp_path, upstream_auth="aws", aws_region=REGION, **options
    )
    return Upstream(settings, aws.credentials_from(settings))


async def qido(upstream: Upstream, query: dict[str, str] | None = None) -> int:
    url = (upstream.base / "studies").with_query(query or {})
    async with upstream.request("GET", url, {"Accept": "application/dicom+json"}) as response:
        await response.read()
        return response.status


async def test_qido_with_wildcards_and_commas_is_signed_as_the_service_reads_it(
    origin: FakeUpstream, checker: SigV4Checker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_static(monkeypatch)
    upstream = upstream_for(origin, tmp_path)
    try:
        assert await qido(upstream, QUERY) == 200
    finally:
        await upstream.close()
    assert origin.refused == [] and checker.verified == 1
    path, headers = origin.received[0].path_qs, origin.received[0].headers
    assert "DOE%2A" in path and "00080020%2C00080030" in path and "%2B0100" in path
    assert headers["X-Amz-Security-Token"] == STATIC.token
    assert headers["Authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={STATIC.access_key}/")
    assert f"/{REGION}/medical-imaging/aws4_request" in headers["Authorization"]


async def test_a_tampered_header_or_an_old_date_is_refused(
    origin: FakeUpstream, checker: SigV4Checker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The emulator is as strict as the service: signed headers and the date matter."""
    use_static(monkeypatch)
    credentials = aws.AwsCredentials(REGION, lambda: botocore.session.Session().get_credentials())
    frozen = await credentials._current()
    url = URL(origin.dicomweb + "/studies")
    request = Outgoing("GET", url, CIMultiDict({"Content-Type": "application/dicom+json"}), None)
    sigv4.sign(frozen.sdk, REGION, request, sigv4.EMPTY_SHA256)
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers=request.headers) as response:
            assert response.status == 200
        tampered = CIMultiDict(request.headers)
        tampered["Content-Type"] = "application/json"
        async with session.get(url, headers=tampered) as response:
            assert response.status == 403
        checker.skew = datetime.timedelta(minutes=6)
        async with session.get(url, headers=request.headers) as response:
            assert response.status == 403
    assert origin.refused == ["SignatureDoesNotMatch", "Signature expired"]
    await credentials.close()


async def test_stow_batches_are_hashed_from_the_spool_and_carry_content_length(
    origin: FakeUpstream,
    archived: Study,
    checker: SigV4Checker,
    start_proxy: Callable[..., ProxyThread],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_static(monkeypatch)
    proxy = start_proxy(
        origin.dicomweb, upstream_auth="aws", aws_region=REGION, stow_max_instances=2
    )
    body, content_type = multipart_stow(archived)
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            proxy.dicomweb + "/studies", data=body, headers={"Content-Type": content_type}
        ) as response,
    ):
        document = await response.json(content_type=None)
    assert response.status == 200, document
    stows = [r for r in origin.received if r.method == "POST" and not r.refused]
    # Sent --stow-concurrency at a time, so they may arrive in any order.
    assert sorted((len(r.parts()) for r in stows), reverse=True) == [2, 2, 1]
    assert all(int(r.headers.get("Content-Length", 0)) > 0 for r in stows)
    posts = [r.headers for r in origin.received if r.method == "POST"]
    assert all(len(h["X-Amz-Content-SHA256"]) == 64 for h in posts)  # a real hash, not UNSIGNED
    assert origin.refused == [] and checker.verified == 3


async def test_qido_and_wado_through_the_proxy_then_wado_from_the_cache(
    origin: FakeUpstream,
    archived: Study,
    checker: SigV4Checker,
    start_proxy: Callable[..., ProxyThread],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_static(monkeypatch)
    proxy = start_proxy(origin.dicomweb, upstream_auth="aws", aws_region=REGION)
    series, sop, data = archived.instances[0]
    instance = f"{proxy.dicomweb}/studies/{archived.uid}/series/{series}/instances/{sop}"
    accept = {"Accept": 'multipart/related; type="application/dicom"'}
    async with aiohttp.ClientSession() as session:
        async with session.get(proxy.dicomweb + "/studies", params=QUERY) as response:
            assert response.status == 200
            assert (await response.json(content_type=None))[0]["0020000D"]["Value"] == [
                archived.uid
            ]
        caches = []
        for _ in range(2):
            async with session.get(instance, headers=accept) as response:
                assert response.status == 200 and data in await response.read()
                caches.append(response.headers.get("X-Cache"))
    assert caches == ["MISS", "HIT"]
    assert origin.count("/instances/") == 1
    assert origin.refused == [] and checker.verified == 2


async def test_temporary_credentials_refreshed_once_for_32_requests_before_they_expire(
    origin: FakeUpstream, pod_identity: AwsCredentialsEndpoint, tmp_path: Path
) -> None:
    """Inside botocore's refresh window (15 min before expiry) the key is renewed:
    once for a wave of 32 concurrent requests, and not at all while it is fresh."""
    pod_identity.lifetime = 14 * 60
    pod_identity.delay = 0.2
    upstream = upstream_for(origin, tmp_path)
    credentials = upstream.credentials
    assert isinstance(credentials, aws.AwsCredentials)
    try:
        assert await asyncio.gather(*(qido(upstream) for _ in range(32))) == [200] * 32
        # One flight; in it botocore found the first key already due and fetched again.
        assert (credentials.fetches, pod_identity.calls) == (1, 2)
        pod_identity.lifetime = 3600
        assert await asyncio.gather(*(qido(upstream) for _ in range(32))) == [200] * 32
        assert (credentials.fetches, pod_identity.calls) == (2, 3)  # due: one refresh
        assert await asyncio.gather(*(qido(upstream) for _ in range(32))) == [200] * 32
        assert (credentials.fetches, pod_identity.calls) == (2, 3)  # fresh: none
    finally:
        await upstream.close()
    used = {
        r.headers["Authorization"].split("Credential=")[1].split("/")[0] for r in origin.received
    }
    assert used == {key.access_key for key in pod_identity.issued[1:]}  # the first was due at once
    assert origin.refused == []


async def test_a_refused_key_is_replaced_once_and_the_request_sent_again(
    origin: FakeUpstream,
    checker: SigV4Checker,
    pod_identity: AwsCredentialsEndpoint,
    tmp_path: Path,
) -> None:
    upstream = upstream_for(origin, tmp_path)
    try:
        assert await qido(upstream) == 200
        del checker.keys[pod_identity.issued[0].access_key]  # revoked (or its token expired)
        assert await asyncio.gather(*(qido(upstream) for _ in range(8))) == [200] * 8
    finally:
        await upstream.close()
    assert pod_identity.calls == 2
    assert origin.refused and set(origin.refused) == {
        "UnrecognizedClientException: unknown access key"
    }


async def test_an_expired_signature_is_signed_again_once(
    origin: FakeUpstream, checker: SigV4Checker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service clock 6 minutes ahead refuses every signature: a signature just made
    with an unchanged key is not worth making again, so the 403 reaches the caller."""
    use_static(monkeypatch)
    checker.skew = datetime.timedelta(minutes=6)
    upstream = upstream_for(origin, tmp_path)
    try:
        assert await qido(upstream) == 403
    finally:
        await upstream.close()
    assert origin.refused == ["Signature expired"]


async def test_check_names_the_credential_source(
    origin: FakeUpstream,
    pod_identity: AwsCredentialsEndpoint,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    argv = [
        "check",
        "--upstream-url",
        origin.dicomweb,
        "--upstream-auth",
        "aws",
        "--aws-region",
        REGION,
        "--data-dir",
        str(tmp_path / "data"),
    ]
    status = await asyncio.to_thread(main, argv)
    out = capfd.readouterr().out
    assert status == 0, out
    assert (
        f"upstream auth: ok (aws sigv4 for medical-imaging in {REGION}, credentials from "
        "the container credentials endpoint (EKS Pod Identity, ECS): credential ready)"
    ) in out
    assert "qido: ok (1 study returned)" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--stow-max-bytes", "2GiB"], "--stow-max-bytes: at most 1000000000 bytes"),
        (["--upstream-url", "https://dicom-medical-imaging.us-east-1.amazonaws.com/datastore/x"],
         f"--aws-region: {REGION}, but the upstream URL is in us-east-1"),
    ],
)  # fmt: skip
def test_start_up_refuses_what_the_service_would(
    args: list[str], message: str, capfd: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "serve",
        "--upstream-url",
        "http://127.0.0.1:9/datastore/x",
        "--upstream-auth",
        "aws",
        "--aws-region",
        REGION,
        *args,
    ]
    assert main(argv) == 2
    err = capfd.readouterr().err
    assert message in err and err.count("\n") == 1


def test_region_comes_from_the_healthimaging_host(tmp_path: Path) -> None:
    url = "https://dicom-medical-imaging.ap-southeast-2.amazonaws.com/datastore/x"
    credentials = aws.credentials_from(settings_for(url, tmp_path, upstream_auth="aws"))
    assert credentials.region == "ap-southeast-2"


def test_a_missing_botocore_stops_start_up_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "botocore", None)
    argv = [
        "serve",
        "--upstream-url",
        "http://127.0.0.1:9/x",
        "--upstream-auth",
        "aws",
        "--aws-region",
        REGION,
    ]
    assert main(argv) == 2
    err = capfd.readouterr().err
    assert err == (
        "dicomweb-proxy: --upstream-auth aws: the botocore library is not installed "
        "(pip install 'dicomweb-proxy[aws]')\n"
    )
