"""Upstream auth end to end: clients -> the proxy (in a thread) -> in-process upstream
and token endpoint.  Asserts on what the upstream and the token endpoint received."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import aiohttp

from harness.dicomgen import make_study
from proxy.settings import Settings
from tests.authservers import TokenEndpoint, authorizations, bearer_origin, statuses
from tests.fake_upstream import FakeUpstream
from tests.support import ProxyThread, multipart_stow

CLIENT_HEADERS = {
    "Authorization": "Basic Y2xpZW50OmNsaWVudC1wdw==",
    "Cookie": "session=client-cookie-0e1",
    "Proxy-Authorization": "Basic cHJveHk6cHJveHktcHc=",
}


def oauth2_options(idp: TokenEndpoint, tmp_path: Path) -> dict[str, object]:
    secret_file = tmp_path / "client-secret"
    secret_file.write_text(idp.client_secret + "\n")
    return {
        "upstream_auth": "oauth2",
        "oauth2_token_url": idp.url,
        "oauth2_client_id": idp.client_id,
        "oauth2_client_secret_file": str(secret_file),
        "oauth2_scope": "dicom",
    }


async def get_many(url: str, count: int, headers: dict[str, str] | None = None) -> list[int]:
    async with aiohttp.ClientSession() as session:

        async def one() -> int:
            async with session.get(url, headers=headers) as response:
                await response.read()
                return response.status

        return list(await asyncio.gather(*(one() for _ in range(count))))


async def test_32_concurrent_client_requests_make_one_token_request(
    idp: TokenEndpoint,
    oauth_upstream: FakeUpstream,
    start_proxy: Callable[..., ProxyThread],
    tmp_path: Path,
) -> None:
    idp.delay = 0.2  # the fetch is still in flight while the other requests arrive
    proxy = start_proxy(oauth_upstream.dicomweb, **oauth2_options(idp, tmp_path))
    assert await get_many(proxy.dicomweb + "/studies", 32) == [200] * 32
    assert idp.calls == 1
    assert idp.forms[0]["scope"] == "dicom"


async def test_revoked_token_refreshed_once_and_the_client_never_sees_401(
    idp: TokenEndpoint,
    oauth_upstream: FakeUpstream,
    start_proxy: Callable[..., ProxyThread],
    tmp_path: Path,
) -> None:
    proxy = start_proxy(oauth_upstream.dicomweb, **oauth2_options(idp, tmp_path))
    assert await get_many(proxy.dicomweb + "/studies", 1) == [200]
    idp.revoke_all()
    assert await get_many(proxy.dicomweb + "/studies", 8) == [200] * 8
    assert idp.calls == 2
    assert statuses(oauth_upstream).count(401) >= 1


async def test_client_credentials_and_cookies_never_reach_the_upstream(
    idp: TokenEndpoint,
    oauth_upstream: FakeUpstream,
    start_proxy: Callable[..., ProxyThread],
    tmp_path: Path,
    secrets_checked: set[str],
) -> None:
    secrets_checked.update(CLIENT_HEADERS.values())
    proxy = start_proxy(oauth_upstream.dicomweb, **oauth2_options(idp, tmp_path))
    assert await get_many(proxy.dicomweb + "/studies", 1, CLIENT_HEADERS) == [200]
    received = oauth_upstream.received[0].headers
    assert received["authorization"] == f"Bearer {idp.issued[0]}"
    assert "cookie" not in received
    assert "proxy-authorization" not in received


async def test_passthrough_forwards_the_clients_authorization(
    start_proxy: Callable[..., ProxyThread], fake: FakeUpstream
) -> None:
    origin = bearer_origin(fake, lambda authorization: True)
    base = origin.dicomweb
    proxy = start_proxy(base, upstream_auth="passthrough")
    assert await get_many(proxy.dicomweb + "/studies", 1, CLIENT_HEADERS) == [200]
    received = origin.received[0].headers
    assert received["authorization"] == CLIENT_HEADERS["Authorization"]
    assert received["cookie"] == CLIENT_HEADERS["Cookie"]
    assert "proxy-authorization" not in received  # hop-by-hop: for the proxy, not the origin


async def test_readiness_probe_carries_the_credentials(
    idp: TokenEndpoint,
    oauth_upstream: FakeUpstream,
    start_proxy: Callable[..., ProxyThread],
    tmp_path: Path,
) -> None:
    proxy = start_proxy(oauth_upstream.dicomweb, **oauth2_options(idp, tmp_path))
    async with aiohttp.ClientSession() as session, session.get(proxy.url + "/readyz") as response:
        report = json.loads(await response.read())
    assert report["upstream"] == "ok"
    assert authorizations(oauth_upstream) == [f"Bearer {idp.issued[0]}"]


async def test_rejected_client_gives_502_problem_without_secrets(
    idp: TokenEndpoint,
    oauth_upstream: FakeUpstream,
    start_proxy: Callable[..., ProxyThread],
    tmp_path: Path,
    secrets_checked: set[str],
) -> None:
    secrets_checked.add(idp.client_secret)
    options = oauth2_options(idp, tmp_path)
    idp.client_secret = "the-endpoint-wants-another-secret"
    proxy = start_proxy(oauth_upstream.dicomweb, **options)
    async with (
        aiohttp.ClientSession() as session,
        session.get(proxy.dicomweb + "/studies") as response,
    ):
        body = await response.read()
        assert response.status == 502
    problem = json.loads(body)
    assert problem["title"] == "Upstream authentication failed"
    assert "rejected the client: HTTP 401 (invalid_client)" in problem["detail"]
    secret = (tmp_path / "client-secret").read_text().strip()
    assert secret.encode() not in body
    assert oauth_upstream.received == []


def test_settings_repr_masks_secrets() -> None:
    settings = Settings(
        upstream_url="http://u",
        upstream_password="pw-in-repr-1",
        upstream_token="tok-in-repr-2",
        oauth2_client_secret="cs-in-repr-3",
        admin_token="adm-in-repr-4",
    )
    shown = repr(settings)
    for secret in ("pw-in-repr-1", "tok-in-repr-2", "cs-in-repr-3", "adm-in-repr-4"):
        assert secret not in shown
    assert "upstream_password='***'" in shown


async def test_a_stow_batch_is_sent_again_after_a_401_renews_the_token(
    idp: TokenEndpoint,
    oauth_upstream: FakeUpstream,
    start_proxy: Callable[..., ProxyThread],
    tmp_path: Path,
) -> None:
    """A token revoked mid-upload costs one refresh and one resend of the whole batch,
    not a dead-lettered batch (SPEC section 5)."""
    proxy = start_proxy(oauth_upstream.dicomweb, **oauth2_options(idp, tmp_path))
    assert await get_many(proxy.dicomweb + "/studies", 1) == [200]
    idp.revoke_all()
    study = make_study(1, 2, rows=16, columns=16)
    body, content_type = multipart_stow(study, "renewal-boundary")
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            proxy.dicomweb + "/studies", data=body, headers={"Content-Type": content_type}
        ) as response,
    ):
        document = await response.json(content_type=None)
    # The origin answers 200 with "[]": stored, with items built from the UIDs sent.
    assert response.status == 200, document
    sent = {item["00081155"]["Value"][0] for item in document["00081199"]["Value"]}
    assert sent == {uid for _, uid, _ in study.instances}
    assert statuses(oauth_upstream)[-2:] == [401, 200]
    assert idp.calls == 2
    first, second = [r.body for r in oauth_upstream.received][-2:]
    assert first == second and all(data in second for _, _, data in study.instances)
    assert not list((tmp_path / "data").rglob("dead-letter/*/*"))
