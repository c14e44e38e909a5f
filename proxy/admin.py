"""The ``/admin/*`` gate: enabled only with ``--admin-token``; bearer token required.

Feature modules (cache, dead letter, status page) add their own ``/admin/...`` routes
and call :func:`require_admin` first.  The token is compared in constant time and never
logged or echoed.
"""

from __future__ import annotations

import hmac
from pathlib import Path

from aiohttp import web

from proxy.errors import NotFound, Unauthorized
from proxy.settings import Settings

ADMIN_TOKEN = web.AppKey("admin_token", str)


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
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), expected.encode()):
        raise Unauthorized(
            "a valid admin bearer token is required",
            headers={"WWW-Authenticate": 'Bearer realm="dicomweb-proxy admin"'},
        )
