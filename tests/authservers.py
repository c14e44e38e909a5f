"""For authentication tests: an in-process OAuth2 token endpoint that records what it
received, and the fake upstream made a DICOMweb origin that admits only the
credentials a test accepts."""

from __future__ import annotations

import asyncio
import secrets
from base64 import b64decode
from collections.abc import Callable
from urllib.parse import unquote_plus

from aiohttp import web

from tests.fake_upstream import DICOM_JSON, Answer, FakeUpstream, Received


class TokenEndpoint:
    """RFC 6749 section 4.4 token endpoint: counts its calls, issues short-lived
    tokens, and can revoke every token it issued."""

    def __init__(
        self,
        client_id: str = "proxy-client",
        client_secret: str = "client-secret-3f9a",
        *,
        lifetime: int = 3600,
        delay: float = 0.0,
        client_auth: str = "basic",
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.lifetime = lifetime
        self.delay = delay
        self.client_auth = client_auth
        self.url = ""  # set by whoever starts it
        self.calls = 0
        self.live: set[str] = set()
        self.issued: list[str] = []
        self.forms: list[dict[str, str]] = []
        self.app = web.Application()
        self.app.router.add_post("/token", self.handle)

    def revoke_all(self) -> None:
        self.live.clear()

    def accepts(self, authorization: str) -> bool:
        scheme, _, token = authorization.partition(" ")
        return scheme == "Bearer" and token in self.live

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        form = {key: str(value) for key, value in (await request.post()).items()}
        self.forms.append({k: v for k, v in form.items() if k != "client_secret"})
        if self.delay:
            await asyncio.sleep(self.delay)  # widen the window for concurrent callers
        if self._client(request, form) != (self.client_id, self.client_secret):
            return web.json_response({"error": "invalid_client"}, status=401)
        if form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        token = "tok-" + secrets.token_hex(12)
        self.live.add(token)
        self.issued.append(token)
        return web.json_response(
            {"access_token": token, "token_type": "Bearer", "expires_in": self.lifetime}
        )

    def _client(self, request: web.Request, form: dict[str, str]) -> tuple[str, str]:
        if self.client_auth == "body":
            return form.get("client_id", ""), form.get("client_secret", "")
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Basic":
            return "", ""
        user, _, password = b64decode(encoded).decode().partition(":")
        return unquote_plus(user), unquote_plus(password)


def bearer_origin(fake: FakeUpstream, accepts: Callable[[str], bool]) -> FakeUpstream:
    """``fake`` as a minimal DICOMweb origin: ``[]`` to a request whose ``Authorization``
    passes ``accepts``, a 401 to the others."""

    def check(received: Received) -> str | None:
        admitted = accepts(received.headers.get("Authorization", ""))
        return None if admitted else "credentials not accepted"

    fake.check = check
    fake.route("*", "/dicom-web/{path:.*}", Answer(body="[]", headers=DICOM_JSON))
    return fake


def authorizations(fake: FakeUpstream) -> list[str]:
    return [received.headers.get("Authorization", "") for received in fake.received]


def statuses(fake: FakeUpstream) -> list[int]:
    return [received.status for received in fake.received]
