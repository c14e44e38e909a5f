"""The ``/admin/*`` gate: enabled only with ``--admin-token``; bearer token or session.

Feature modules (cache, dead letter, status page) add their own ``/admin/...`` routes
and call :func:`require_admin` first.  Scripts send the token as a bearer token; a
browser signs in once through the status page's form and then carries a session
cookie (HttpOnly, SameSite=Strict) holding an expiry and an HMAC of it keyed by the
token — never the token itself.  Tokens and cookies are compared in constant time and
never logged or echoed.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from pathlib import Path

from aiohttp import web

from proxy.errors import NotFound, Unauthorized
from proxy.settings import Settings
from proxy.state import ADMIN_TOKEN

SESSION_COOKIE = "dicomweb_proxy_admin"
SESSION_SECONDS = 12 * 3600


def load_admin_token(settings: Settings) -> str | None:
    """``--admin-token-file`` wins over ``--admin-token`` (files keep secrets out of ps)."""
    if settings.admin_token_file:
        return Path(settings.admin_token_file).read_text().strip() or None
    return settings.admin_token


def require_admin(request: web.Request) -> None:
    """404 when admin is disabled (nothing to discover), 401 without the right token."""
    expected = request.app.get(ADMIN_TOKEN)
    if not expected:
        raise NotFound("no such route")
    if not (_bearer_valid(request, expected) or _session_valid(request, expected)):
        raise Unauthorized(
            "a valid admin bearer token is required",
            headers={"WWW-Authenticate": 'Bearer realm="dicomweb-proxy admin"'},
        )


def token_matches(app: web.Application, given: str) -> bool:
    expected = app.get(ADMIN_TOKEN)
    return bool(expected) and hmac.compare_digest(given.encode(), str(expected).encode())


def _bearer_valid(request: web.Request, expected: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), expected.encode())


def _session_value(token: str, expires: int) -> str:
    mac = hmac.new(token.encode(), f"admin-session:{expires}".encode(), hashlib.sha256)
    return f"{expires}.{mac.hexdigest()}"


def _session_valid(request: web.Request, expected: str) -> bool:
    given = request.cookies.get(SESSION_COOKIE, "")
    expires, _, _ = given.partition(".")
    if not expires.isdigit() or int(expires) < time.time():
        return False
    return hmac.compare_digest(given.encode(), _session_value(expected, int(expires)).encode())


def start_session(request: web.Request, response: web.StreamResponse) -> None:
    """Set the session cookie after a successful sign-in."""
    expires = int(time.time()) + SESSION_SECONDS
    response.set_cookie(
        SESSION_COOKIE,
        _session_value(request.app[ADMIN_TOKEN], expires),
        max_age=SESSION_SECONDS,
        path="/admin",
        httponly=True,
        samesite="Strict",
        secure=request.secure or None,
    )


def end_session(response: web.StreamResponse) -> None:
    response.del_cookie(SESSION_COOKIE, path="/admin")
