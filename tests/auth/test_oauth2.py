"""OAuth2 client credentials through :class:`Upstream`: single flight, expiry,
revocation, replayable bodies, and failures named without secrets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from harness.net import free_port
from proxy.auth.oauth2 import ClientConfig, OAuth2Credentials, parse_token_response
from proxy.auth.watched import Secret
from proxy.errors import UpstreamAuthFailed
from proxy.upstream import Once, Upstream
from tests.auth.conftest import Clock, settings_for
from tests.authservers import TokenEndpoint, authorizations, bearer_origin, statuses
from tests.fake_upstream import FakeUpstream


def credentials_for(
    idp: TokenEndpoint, clock: Clock, *, secret: str | None = None, **config: str
) -> OAuth2Credentials:
    client = ClientConfig(
        token_url=idp.url,
        client_id=idp.client_id,
        secret=Secret(inline=secret if secret is not None else idp.client_secret),
        **config,
    )
    return OAuth2Credentials(client, timeout=5, clock=clock)


@pytest.fixture
async def upstream(
    idp: TokenEndpoint, oauth_upstream: FakeUpstream, clock: Clock, tmp_path: Path
) -> AsyncIterator[Upstream]:
    session = Upstream(settings_for(oauth_upstream.dicomweb, tmp_path), credentials_for(idp, clock))
    yield session
    await session.close()


async def qido(upstream: Upstream) -> int:
    async with upstream.request("GET", upstream.base / "studies", {}) as response:
        return response.status


async def wave(upstream: Upstream, count: int = 32) -> list[int]:
    return list(await asyncio.gather(*(qido(upstream) for _ in range(count))))


async def test_concurrent_requests_share_one_token_request(
    upstream: Upstream, idp: TokenEndpoint, oauth_upstream: FakeUpstream
) -> None:
    assert await wave(upstream) == [200] * 32
    assert idp.calls == 1
    assert set(authorizations(oauth_upstream)) == {f"Bearer {idp.issued[0]}"}


async def test_token_reused_until_shortly_before_expiry_then_refreshed_once(
    upstream: Upstream, idp: TokenEndpoint, oauth_upstream: FakeUpstream, clock: Clock
) -> None:
    await qido(upstream)
    clock.advance(3600 - 61)  # lifetime 3600 s; refreshed 60 s before the end
    assert await wave(upstream) == [200] * 32
    assert idp.calls == 1
    clock.advance(2)
    assert await wave(upstream) == [200] * 32
    assert idp.calls == 2
    assert authorizations(oauth_upstream)[-32:] == [f"Bearer {idp.issued[1]}"] * 32


async def test_revoked_token_is_replaced_once_and_the_request_succeeds(
    upstream: Upstream, idp: TokenEndpoint, oauth_upstream: FakeUpstream
) -> None:
    await qido(upstream)
    idp.revoke_all()
    assert await qido(upstream) == 200
    assert idp.calls == 2
    assert statuses(oauth_upstream) == [200, 401, 200]


async def test_revocation_seen_by_many_requests_costs_one_refresh(
    upstream: Upstream, idp: TokenEndpoint
) -> None:
    await qido(upstream)
    idp.revoke_all()
    assert await wave(upstream) == [200] * 32
    assert idp.calls == 2


async def test_streamed_body_is_not_replayed_but_the_token_is_renewed(
    upstream: Upstream, idp: TokenEndpoint, oauth_upstream: FakeUpstream
) -> None:
    await qido(upstream)
    idp.revoke_all()

    async def stream() -> AsyncIterator[bytes]:
        yield b"part-1"

    async with upstream.request("POST", upstream.base / "studies", {}, Once(stream())) as response:
        assert response.status == 401  # a consumed stream cannot be sent again
    assert idp.calls == 2
    assert await qido(upstream) == 200
    assert statuses(oauth_upstream) == [200, 401, 200]


async def test_body_factory_is_replayed_after_a_refused_token(
    upstream: Upstream, idp: TokenEndpoint, oauth_upstream: FakeUpstream
) -> None:
    await qido(upstream)
    idp.revoke_all()

    async def spooled() -> AsyncIterator[bytes]:
        for part in (b"batch-", b"bytes"):
            yield part

    async with upstream.request("POST", upstream.base / "studies", {}, spooled) as response:
        assert response.status == 200
    assert [r.body for r in oauth_upstream.received][-2:] == [b"batch-bytes", b"batch-bytes"]
    assert statuses(oauth_upstream)[-2:] == [401, 200]


async def test_upstream_refusing_every_token_does_not_make_every_request_fetch(
    idp: TokenEndpoint,
    fake: FakeUpstream,
    clock: Clock,
    tmp_path: Path,
) -> None:
    refusing = bearer_origin(fake, lambda authorization: False)
    base = refusing.dicomweb
    upstream = Upstream(settings_for(base, tmp_path), credentials_for(idp, clock))
    try:
        assert await qido(upstream) == 401
        assert await qido(upstream) == 401
    finally:
        await upstream.close()
    assert idp.calls == 2  # the first token, and one renewal after the first 401


async def test_client_authenticates_with_form_fields_and_scope(
    idp: TokenEndpoint, oauth_upstream: FakeUpstream, clock: Clock, tmp_path: Path
) -> None:
    idp.client_auth = "body"
    credentials = credentials_for(idp, clock, client_auth="body", scope="dicom.read")
    upstream = Upstream(settings_for(oauth_upstream.dicomweb, tmp_path), credentials)
    try:
        assert await qido(upstream) == 200
    finally:
        await upstream.close()
    assert idp.forms == [
        {"grant_type": "client_credentials", "scope": "dicom.read", "client_id": idp.client_id}
    ]


async def test_rejected_client_is_named_without_the_secret(
    idp: TokenEndpoint,
    oauth_upstream: FakeUpstream,
    clock: Clock,
    tmp_path: Path,
    secrets_checked: set[str],
) -> None:
    wrong = "wrong-secret-77c1"
    secrets_checked.add(wrong)
    credentials = credentials_for(idp, clock, secret=wrong)
    upstream = Upstream(settings_for(oauth_upstream.dicomweb, tmp_path), credentials)
    try:
        with pytest.raises(UpstreamAuthFailed) as caught:
            await qido(upstream)
    finally:
        await upstream.close()
    assert str(caught.value) == (
        "the OAuth2 token endpoint rejected the client: HTTP 401 (invalid_client)"
    )
    assert wrong not in repr(credentials)
    assert oauth_upstream.received == []


async def test_unreachable_token_endpoint_is_named(clock: Clock, tmp_path: Path) -> None:
    client = ClientConfig(
        token_url=f"http://127.0.0.1:{free_port()}/token",
        client_id="c",
        secret=Secret(inline="s-0b5e"),
    )
    credentials = OAuth2Credentials(client, timeout=5, clock=clock)
    try:
        with pytest.raises(UpstreamAuthFailed, match="token endpoint is unreachable"):
            await credentials.authorization()
    finally:
        await credentials.close()


@pytest.mark.parametrize(
    ("status", "document", "message"),
    [
        (200, {"token_type": "Bearer"}, "no usable access_token"),
        (200, {"access_token": "a\r\nb"}, "no usable access_token"),
        (200, {"access_token": "abc", "token_type": "mac"}, "not Bearer"),
        (503, None, "answered HTTP 503"),
        (400, {"error": "invalid_scope"}, "rejected the client: HTTP 400 (invalid_scope)"),
        (400, {"error": "has spaces <script>"}, "rejected the client: HTTP 400"),
    ],
)
def test_token_response_problems_are_named(status: int, document: object, message: str) -> None:
    with pytest.raises(UpstreamAuthFailed) as caught:
        parse_token_response(status, document, 0.0)
    assert str(caught.value).endswith(message)


@pytest.mark.parametrize(
    ("expires_in", "refresh_at"),
    [(3600, 3540.0), ("100", 90.0), (None, 270.0), ("soon", 270.0), (0, 0.0)],
)
def test_refresh_point(expires_in: object, refresh_at: float) -> None:
    document = {"access_token": "abc", "expires_in": expires_in}
    assert parse_token_response(200, document, 0.0).refresh_at == refresh_at
