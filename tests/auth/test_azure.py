"""``--upstream-auth azure``: client secret, AKS workload identity and managed identity
(IMDS) against an emulated Entra ID that checks tenant, client, resource and the
secret or federated assertion (tests/cloudservers.py)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from harness.dicomgen import Study, make_study
from proxy.auth import config
from proxy.cli import main
from proxy.upstream import Upstream
from tests.auth.conftest import Clock, Serve, settings_for
from tests.auth.test_google import exercise, wave
from tests.cloudservers import EntraEndpoint, serve_study
from tests.fake_upstream import FakeUpstream
from tests.support import ProxyThread

# main(["check", ...]) configures the root logger; the tests after must not inherit it.

TENANT = "72f988bf-0000-4000-8000-2d7cd011db47"
CLIENT = "4a7b2c1d-0000-4000-8000-000000000abc"
SECRET = "entra-client-secret~9Qx"


@pytest.fixture(autouse=True)
def no_ambient_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("AZURE_") or name.startswith("IDENTITY_"):
            monkeypatch.delenv(name)


@pytest.fixture
async def entra(serve: Serve, secrets_checked: set[str]) -> AsyncIterator[EntraEndpoint]:
    endpoint = EntraEndpoint(TENANT, CLIENT, secret=SECRET)
    endpoint.url = await serve(endpoint.app)
    yield endpoint
    secrets_checked.add(SECRET)
    secrets_checked.update(endpoint.tokens.issued)
    secrets_checked.update(form.get("client_assertion", "") for form in endpoint.forms)


@pytest.fixture
def archived() -> Study:
    return make_study(1, 5, rows=16, columns=16)


@pytest.fixture
def origin(entra: EntraEndpoint, fake: FakeUpstream, archived: Study) -> FakeUpstream:
    """The fake upstream as Azure's DICOM service, admitting Entra's live tokens."""
    serve_study(fake, archived, entra.tokens.bearer_check)
    fake.base_path = "/v2"
    return fake


def federated(tmp_path: Path, entra: EntraEndpoint, assertion: str) -> dict[str, str]:
    """What the AKS workload identity webhook puts into the pod."""
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text(assertion)
    entra.assertion = assertion
    return {
        "AZURE_CLIENT_ID": CLIENT,
        "AZURE_TENANT_ID": TENANT,
        "AZURE_FEDERATED_TOKEN_FILE": str(token_file),
        "AZURE_AUTHORITY_HOST": entra.url + "/",
    }


async def test_client_secret_one_token_for_32_requests_and_the_resource_scope(
    entra: EntraEndpoint, origin: FakeUpstream, tmp_path: Path, clock: Clock
) -> None:
    entra.delay = 0.2
    settings = settings_for(
        origin.dicomweb, tmp_path, upstream_auth="azure", azure_tenant_id=TENANT,
        azure_client_id=CLIENT, azure_client_secret=SECRET,
    )  # fmt: skip
    credentials = config.credentials_from(settings, {"AZURE_AUTHORITY_HOST": entra.url})
    credentials._clock = clock  # type: ignore[union-attr]
    upstream = Upstream(settings, credentials)
    try:
        assert await wave(upstream) == [200] * 32
        assert entra.calls == 1
        clock.advance(3600 - 59)
        assert await wave(upstream) == [200] * 32
        assert entra.calls == 2
    finally:
        await upstream.close()
    form = entra.forms[0]
    assert form["scope"] == "https://dicom.healthcareapis.azure.com/.default"
    assert (form["client_id"], form["grant_type"]) == (CLIENT, "client_credentials")
    assert origin.refused == []


async def test_workload_identity_reads_the_rotated_token_file_on_each_refresh(
    entra: EntraEndpoint, origin: FakeUpstream, tmp_path: Path, secrets_checked: set[str]
) -> None:
    environ = federated(tmp_path, entra, "eyJhbGciOiJSUzI1NiJ9.first-projected-token.sig1")
    settings = settings_for(origin.dicomweb, tmp_path, upstream_auth="azure")
    upstream = Upstream(settings, config.credentials_from(settings, environ))
    try:
        assert await wave(upstream) == [200] * 32
        # The kubelet rotates the projected token; Entra now accepts only the new one.
        Path(environ["AZURE_FEDERATED_TOKEN_FILE"]).write_text("eyJhbGciOiJSUzI1NiJ9.second.sig2\n")
        entra.assertion = "eyJhbGciOiJSUzI1NiJ9.second.sig2"
        entra.tokens.live.clear()  # and the access token was revoked: one 401, one refresh
        assert await wave(upstream) == [200] * 32
    finally:
        await upstream.close()
    secrets_checked.add("eyJhbGciOiJSUzI1NiJ9.second.sig2")
    assert entra.calls == 2
    assertions = [form["client_assertion"] for form in entra.forms]
    assert assertions == [
        "eyJhbGciOiJSUzI1NiJ9.first-projected-token.sig1",
        "eyJhbGciOiJSUzI1NiJ9.second.sig2",
    ]
    assert all("client_secret" not in form for form in entra.forms)


async def test_managed_identity_asks_imds_with_its_header_and_resource(
    entra: EntraEndpoint, origin: FakeUpstream, tmp_path: Path
) -> None:
    settings = settings_for(
        origin.dicomweb, tmp_path, upstream_auth="azure", azure_client_id=CLIENT
    )
    environ = {"AZURE_POD_IDENTITY_AUTHORITY_HOST": entra.url}
    credentials = config.credentials_from(settings, environ)
    upstream = Upstream(settings, credentials)
    try:
        assert await wave(upstream) == [200] * 32
    finally:
        await upstream.close()
    assert entra.calls == 1
    (query,) = entra.imds_queries
    assert query == {"api-version": "2018-02-01", "resource": entra.RESOURCE, "client_id": CLIENT}
    assert credentials is not None
    assert credentials.describe() == (
        f"azure managed identity (client id {CLIENT}) through IMDS at {entra.url}"
    )


async def test_qido_wado_from_the_cache_and_stow_through_the_proxy(
    entra: EntraEndpoint,
    origin: FakeUpstream,
    archived: Study,
    start_proxy: Callable[..., ProxyThread],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in federated(tmp_path, entra, "eyJhbGciOiJSUzI1NiJ9.proxy.sig").items():
        monkeypatch.setenv(name, value)
    proxy = start_proxy(origin.dicomweb, upstream_auth="azure", stow_max_instances=2)
    await exercise(proxy, origin, archived)
    assert entra.calls == 1 and origin.refused == []


async def test_check_names_workload_identity(
    entra: EntraEndpoint,
    origin: FakeUpstream,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    environ = federated(tmp_path, entra, "eyJhbGciOiJSUzI1NiJ9.check.sig")
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    argv = [
        "check",
        "--upstream-url",
        origin.dicomweb,
        "--upstream-auth",
        "azure",
        "--data-dir",
        str(tmp_path / "data"),
    ]
    assert await asyncio.to_thread(main, argv) == 0
    out = capfd.readouterr().out
    assert (
        "upstream auth: ok (azure workload identity (federated token file "
        f"{environ['AZURE_FEDERATED_TOKEN_FILE']}) of app {CLIENT} in tenant {TENANT}: credential ready)"
    ) in out
    assert "qido: ok (1 study returned)" in out


async def test_a_wrong_secret_is_named_without_it(
    entra: EntraEndpoint, origin: FakeUpstream, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("not-the-secret-31f\n")
    argv = [
        "check", "--upstream-url", origin.dicomweb, "--upstream-auth", "azure",
        "--azure-tenant-id", TENANT, "--azure-client-id", CLIENT,
        "--azure-client-secret-file", str(secret_file), "--data-dir", str(tmp_path / "data"),
    ]  # fmt: skip
    os.environ["AZURE_AUTHORITY_HOST"] = entra.url
    try:
        assert await asyncio.to_thread(main, argv) == 1
    finally:
        del os.environ["AZURE_AUTHORITY_HOST"]
    out = capfd.readouterr().out
    assert "the Entra ID token endpoint rejected the client: HTTP 401 (invalid_client)" in out
    assert "not-the-secret-31f" not in out
    assert origin.received == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--azure-client-secret", "s3cr3t-cli-azure"],
         "--azure-tenant-id: required with --upstream-auth azure and a client secret (or AZURE_TENANT_ID)"),
        (["--azure-tenant-id", TENANT, "--azure-client-secret", "s3cr3t-cli-azure"],
         "--azure-client-id: required with --upstream-auth azure and a client secret (or AZURE_CLIENT_ID)"),
    ],
)  # fmt: skip
def test_missing_ids_stop_start_up_naming_the_option(
    args: list[str], message: str, capfd: pytest.CaptureFixture[str]
) -> None:
    argv = ["serve", "--upstream-url", "http://127.0.0.1:9/v2", "--upstream-auth", "azure", *args]
    assert main(argv) == 2
    err = capfd.readouterr().err
    assert message in err and err.count("\n") == 1 and "s3cr3t-cli-azure" not in err
