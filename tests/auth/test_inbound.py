"""Inbound authentication: htpasswd Basic (bcrypt, SHA-256/512-crypt) and bearer
tokens, the open routes, the admin route, and the verdict cache."""

from __future__ import annotations

import json
from base64 import b64encode
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from passlib.hash import apr_md5_crypt, bcrypt, sha256_crypt, sha512_crypt

from proxy.admin import require_admin
from proxy.app import create_app
from proxy.auth.inbound import HtpasswdGate, TokenGate, basic_credentials
from proxy.auth.watched import WatchedFile
from tests.auth.conftest import Clock, settings_for
from tests.authservers import bearer_origin
from tests.fake_upstream import FakeUpstream

PASSWORDS = {"alice": "alice-pw-1", "bob": "bob-pw-2", "carol": "carol-pw-3", "dave": "dave-pw-4"}
TOKENS = ("client-token-aaa111", "client-token-bbb222")
ADMIN = "admin-token-ccc333"

Client = Callable[..., Awaitable[TestClient[Any, Any]]]


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + b64encode(f"{user}:{password}".encode()).decode()}


def write_htpasswd(path: Path) -> Path:
    lines = [
        f"alice:{bcrypt.using(rounds=4).hash(PASSWORDS['alice'])}",
        f"bob:{sha512_crypt.using(rounds=1000).hash(PASSWORDS['bob'])}",
        f"carol:{sha256_crypt.using(rounds=1000).hash(PASSWORDS['carol'])}",
        f"dave:{apr_md5_crypt.hash(PASSWORDS['dave'])}",  # refused scheme
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(autouse=True)
def _register(secrets_checked: set[str]) -> None:
    secrets_checked.update(PASSWORDS.values(), TOKENS, {ADMIN})


@pytest.fixture
def origin(fake: FakeUpstream) -> FakeUpstream:
    return bearer_origin(fake, lambda authorization: True)


@pytest.fixture
def make_client(
    aiohttp_client: Client, origin: FakeUpstream, tmp_path: Path
) -> Callable[..., Awaitable[TestClient[Any, Any]]]:
    """The real app in process, with one admin route added the way features add them."""

    async def make(**overrides: Any) -> TestClient[Any, Any]:
        app = create_app(settings_for(origin.dicomweb, tmp_path, admin_token=ADMIN, **overrides))

        async def admin_ping(request: web.Request) -> web.Response:
            require_admin(request)
            return web.json_response({"admin": True})

        app.router.add_get("/admin/ping", admin_ping)
        return await aiohttp_client(app)

    return make


@pytest.fixture
async def basic_client(
    make_client: Callable[..., Awaitable[TestClient[Any, Any]]], tmp_path: Path
) -> TestClient[Any, Any]:
    htpasswd = write_htpasswd(tmp_path / "htpasswd")
    return await make_client(inbound_auth="basic", inbound_htpasswd=str(htpasswd))


@pytest.fixture
async def bearer_client(
    make_client: Callable[..., Awaitable[TestClient[Any, Any]]], tmp_path: Path
) -> TestClient[Any, Any]:
    tokens = tmp_path / "tokens"
    tokens.write_text("# clients\n" + "\n".join(TOKENS) + "\n\n")
    return await make_client(inbound_auth="bearer", inbound_tokens_file=str(tokens))


@pytest.mark.parametrize("user", ["alice", "bob", "carol"])
async def test_basic_accepts_bcrypt_and_sha_crypt_users(
    basic_client: TestClient[Any, Any], user: str
) -> None:
    response = await basic_client.get("/dicom-web/studies", headers=basic(user, PASSWORDS[user]))
    assert response.status == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic("alice", "wrong"),
        basic("nobody", "alice-pw-1"),
        basic("dave", PASSWORDS["dave"]),  # MD5 apr1 is not accepted
        {"Authorization": "Basic not-base64!"},
        {"Authorization": f"Bearer {TOKENS[0]}"},
    ],
    ids=["none", "wrong-password", "unknown-user", "md5-user", "malformed", "wrong-scheme"],
)
async def test_basic_refuses_with_401_problem_and_challenge(
    basic_client: TestClient[Any, Any], origin: FakeUpstream, headers: dict[str, str]
) -> None:
    response = await basic_client.get("/dicom-web/studies", headers=headers)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == 'Basic realm="dicomweb-proxy", charset="UTF-8"'
    assert response.content_type == "application/problem+json"
    problem = json.loads(await response.read())
    assert problem["status"] == 401
    assert origin.received == []


async def test_bearer_accepts_listed_tokens(bearer_client: TestClient[Any, Any]) -> None:
    for token in TOKENS:
        response = await bearer_client.get(
            "/dicom-web/studies", headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status == 200


async def test_bearer_refusals_carry_rfc6750_challenges(
    bearer_client: TestClient[Any, Any], origin: FakeUpstream
) -> None:
    missing = await bearer_client.get("/dicom-web/studies")
    assert missing.status == 401
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="dicomweb-proxy"'
    wrong = await bearer_client.get(
        "/dicom-web/studies", headers={"Authorization": "Bearer client-token-aaa11"}
    )
    assert wrong.status == 401
    assert wrong.headers["WWW-Authenticate"] == (
        'Bearer realm="dicomweb-proxy", error="invalid_token"'
    )
    comment = await bearer_client.get(
        "/dicom-web/studies", headers={"Authorization": "Bearer # clients"}
    )
    assert comment.status == 401
    assert origin.received == []


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_probes_need_no_credentials(bearer_client: TestClient[Any, Any], path: str) -> None:
    response = await bearer_client.get(path)
    assert response.status in (200, 503)
    assert "WWW-Authenticate" not in response.headers


async def test_admin_routes_use_the_admin_token_instead(
    basic_client: TestClient[Any, Any],
) -> None:
    admin = await basic_client.get("/admin/ping", headers={"Authorization": f"Bearer {ADMIN}"})
    assert admin.status == 200
    user = await basic_client.get("/admin/ping", headers=basic("alice", PASSWORDS["alice"]))
    assert user.status == 401
    assert "admin" in user.headers["WWW-Authenticate"]


async def test_no_path_spelling_borrows_an_open_route(
    bearer_client: TestClient[Any, Any], origin: FakeUpstream
) -> None:
    for path in ("/healthz/../dicom-web/studies", "/admin/%2e%2e/dicom-web/studies"):
        response = await bearer_client.get(path)
        assert response.status in (400, 401, 404)
    assert origin.received == []


async def test_cors_preflight_needs_no_credentials(
    make_client: Callable[..., Awaitable[TestClient[Any, Any]]], tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKENS[0])
    client = await make_client(
        inbound_auth="bearer", inbound_tokens_file=str(tokens), cors_origins=("*",)
    )
    response = await client.options(
        "/dicom-web/studies",
        headers={"Origin": "http://viewer", "Access-Control-Request-Method": "GET"},
    )
    assert response.status == 204


async def test_inbound_credentials_never_reach_the_upstream(
    basic_client: TestClient[Any, Any], origin: FakeUpstream
) -> None:
    headers = {**basic("alice", PASSWORDS["alice"]), "Cookie": "session=cookie-secret-9"}
    response = await basic_client.get("/dicom-web/studies", headers=headers)
    assert response.status == 200
    assert "authorization" not in origin.received[0].headers
    assert "cookie" not in origin.received[0].headers


async def test_htpasswd_verdicts_are_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    verified: list[str] = []
    original = HtpasswdGate._verify

    def counting(self: HtpasswdGate, user: str, password: str) -> bool:
        verified.append(user)
        return original(self, user, password)

    monkeypatch.setattr(HtpasswdGate, "_verify", counting)
    gate = HtpasswdGate(WatchedFile(str(write_htpasswd(tmp_path / "htpasswd")), "x"))
    good = basic("alice", PASSWORDS["alice"])["Authorization"]
    bad = basic("alice", "wrong")["Authorization"]
    assert [await gate.admits(good) for _ in range(3)] == [True, True, True]
    assert [await gate.admits(bad) for _ in range(3)] == [False, False, False]
    assert verified == ["alice", "alice"]
    assert PASSWORDS["alice"] not in repr(gate.__dict__)


async def test_htpasswd_change_is_picked_up_and_drops_cached_verdicts(
    tmp_path: Path, clock: Clock
) -> None:
    path = write_htpasswd(tmp_path / "htpasswd")
    gate = HtpasswdGate(WatchedFile(str(path), "inbound_htpasswd", clock=clock))
    good = basic("alice", PASSWORDS["alice"])["Authorization"]
    assert await gate.admits(good)
    replacement = tmp_path / "htpasswd.new"
    replacement.write_text(f"alice:{bcrypt.using(rounds=4).hash('new-alice-pw')}\n")
    replacement.replace(path)
    clock.advance(1.0)
    assert not await gate.admits(good)
    assert await gate.admits(basic("alice", "new-alice-pw")["Authorization"])


async def test_token_file_change_revokes_a_token(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "tokens"
    path.write_text("\n".join(TOKENS))
    gate = TokenGate(WatchedFile(str(path), "inbound_tokens_file", allow_empty=True, clock=clock))
    assert await gate.admits(f"Bearer {TOKENS[0]}")
    replacement = tmp_path / "tokens.new"
    replacement.write_text(TOKENS[1])
    replacement.replace(path)
    clock.advance(1.0)
    assert not await gate.admits(f"Bearer {TOKENS[0]}")
    assert await gate.admits(f"bearer {TOKENS[1]}")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Basic " + b64encode(b"u:p:q").decode(), ("u", "p:q")),
        ("basic " + b64encode("ü:ß".encode()).decode(), ("ü", "ß")),
        ("Basic " + b64encode(b"nocolon").decode(), None),
        ("Basic " + b64encode(b":p").decode(), None),
        ("Basic " + b64encode(b"\xff:p").decode(), None),
        ("Bearer abc", None),
        ("", None),
    ],
)
def test_basic_credentials_parsing(header: str, expected: tuple[str, str] | None) -> None:
    assert basic_credentials(header) == expected
