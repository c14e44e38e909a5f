"""Start-up validation (exit 2 naming the option) and ``dicomweb-proxy check``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from passlib.hash import apr_md5_crypt

from harness.net import free_port
from proxy.cli import main
from tests.authservers import TokenEndpoint, bearer_origin
from tests.fake_upstream import FakeUpstream

RunCheck = Callable[..., Awaitable[tuple[int, str]]]
UPSTREAM = ["--upstream-url", "http://127.0.0.1:9/dicom-web"]


def files(tmp_path: Path) -> dict[str, str]:
    md5_only = tmp_path / "md5.htpasswd"
    md5_only.write_text(f"dave:{apr_md5_crypt.hash('pw')}\n")
    empty = tmp_path / "empty"
    empty.write_text("# nobody yet\n")
    return {"missing": str(tmp_path / "missing"), "md5": str(md5_only), "empty": str(empty)}


CASES: list[tuple[list[str], str]] = [
    (["--upstream-auth", "basic"], "--upstream-username: required with --upstream-auth basic"),
    (
        ["--upstream-auth", "basic", "--upstream-username", "a:b", "--upstream-password", "p"],
        "--upstream-username: must not contain ':'",
    ),
    (
        ["--upstream-auth", "basic", "--upstream-username", "alice"],
        "--upstream-password: required with --upstream-auth basic",
    ),
    (
        ["--upstream-auth", "basic", "--upstream-username", "a",
         "--upstream-password-file", "{missing}"],
        "--upstream-password-file: cannot read",
    ),
    (["--upstream-auth", "bearer"], "--upstream-token: required with --upstream-auth bearer"),
    (
        ["--upstream-auth", "bearer", "--upstream-token", "tok-cli-1",
         "--upstream-token-file", "{empty}"],
        "--upstream-token: give either --upstream-token or --upstream-token-file",
    ),
    (
        ["--upstream-auth", "oauth2", "--oauth2-client-id", "c"],
        "--oauth2-token-url: required with --upstream-auth oauth2",
    ),
    (
        ["--upstream-auth", "oauth2", "--oauth2-token-url", "https://idp/token"],
        "--oauth2-client-id: required with --upstream-auth oauth2",
    ),
    (
        ["--upstream-auth", "oauth2", "--oauth2-token-url", "https://idp/token",
         "--oauth2-client-id", "c", "--oauth2-client-secret-file", "{missing}"],
        "--oauth2-client-secret-file: cannot read",
    ),
    (["--inbound-auth", "basic"], "--inbound-htpasswd: required with --inbound-auth basic"),
    (["--inbound-auth", "basic", "--inbound-htpasswd", "{md5}"], "holds no usable user"),
    (["--inbound-auth", "bearer", "--inbound-tokens-file", "{empty}"], "holds no token"),
    (["--inbound-auth", "bearer", "--inbound-tokens-file", "{missing}"],
     "--inbound-tokens-file: cannot read"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "message"), CASES)
def test_invalid_auth_options_exit_2_naming_the_option(
    args: list[str],
    message: str,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    secrets_checked: set[str],
) -> None:
    paths = files(tmp_path)
    argv = ["serve", *UPSTREAM, *(arg.format(**paths) for arg in args)]
    assert main(argv) == 2
    err = capfd.readouterr().err
    assert err.startswith("dicomweb-proxy: ")
    assert message in err
    assert err.count("\n") == 1
    assert "tok-cli-1" not in err


@pytest.fixture
def run_check(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> RunCheck:
    """Run ``dicomweb-proxy check`` in a thread (it runs its own event loop)."""

    async def run(*args: str) -> tuple[int, str]:
        argv = ["check", "--data-dir", str(tmp_path / "data"), *args]
        status = await asyncio.to_thread(main, argv)
        return status, capfd.readouterr().out

    return run


def oauth2_args(idp: TokenEndpoint, upstream_url: str, tmp_path: Path) -> list[str]:
    secret_file = tmp_path / "secret"
    secret_file.write_text(idp.client_secret)
    return [
        "--upstream-url", upstream_url,
        "--upstream-auth", "oauth2",
        "--oauth2-token-url", idp.url,
        "--oauth2-client-id", idp.client_id,
        "--oauth2-client-secret-file", str(secret_file),
    ]  # fmt: skip


async def test_check_reports_each_step_ok(
    run_check: RunCheck,
    idp: TokenEndpoint,
    oauth_upstream: FakeUpstream,
    tmp_path: Path,
) -> None:
    status, out = await run_check(*oauth2_args(idp, oauth_upstream.dicomweb, tmp_path))
    assert status == 0, out
    assert f"upstream auth: ok (oauth2 client 'proxy-client' at {idp.url}: credential ready)" in out
    assert "upstream: ok (HTTP 200" in out and "qido: ok" in out
    assert "storage: ok" in out
    assert idp.calls == 1
    assert idp.issued[0] not in out and idp.client_secret not in out


async def test_check_names_an_unreachable_token_endpoint(
    run_check: RunCheck,
    idp: TokenEndpoint,
    oauth_upstream: FakeUpstream,
    tmp_path: Path,
) -> None:
    idp.url = f"http://127.0.0.1:{free_port()}/token"
    status, out = await run_check(*oauth2_args(idp, oauth_upstream.dicomweb, tmp_path))
    assert status == 1
    assert "upstream auth: FAILED" in out
    assert "the OAuth2 token endpoint is unreachable" in out
    assert "qido" not in out
    assert oauth_upstream.received == []


async def test_check_names_a_rejected_client(
    run_check: RunCheck,
    idp: TokenEndpoint,
    oauth_upstream: FakeUpstream,
    tmp_path: Path,
    secrets_checked: set[str],
) -> None:
    args = oauth2_args(idp, oauth_upstream.dicomweb, tmp_path)
    secrets_checked.add(idp.client_secret)
    idp.client_secret = "expected-other-secret"
    status, out = await run_check(*args)
    assert status == 1
    assert "the OAuth2 token endpoint rejected the client: HTTP 401 (invalid_client)" in out


async def test_check_names_an_upstream_401(
    run_check: RunCheck,
    idp: TokenEndpoint,
    fake: FakeUpstream,
    tmp_path: Path,
) -> None:
    refusing = bearer_origin(fake, lambda authorization: False)
    base = refusing.dicomweb
    status, out = await run_check(*oauth2_args(idp, base, tmp_path))
    assert status == 1
    assert "upstream auth: ok" in out
    assert "upstream: FAILED (the upstream rejected the credentials: HTTP 401)" in out
