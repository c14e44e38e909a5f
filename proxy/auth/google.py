"""``--upstream-auth google``: Cloud Healthcare API tokens (SPEC section 4).

Application Default Credentials through ``google-auth`` (the ``[google]`` extra), in
ADC order:

1. ``--google-credentials-file``, else 2. ``GOOGLE_APPLICATION_CREDENTIALS``: a key
   file.  A service-account key signs an RS256 JWT and exchanges it at the key's own
   ``token_uri`` (RFC 7523 section 2.1); a gcloud user login file
   (``authorized_user``) is accepted too.
3. The metadata server (GCE, Cloud Run, GKE Workload Identity): ``GET
   /computeMetadata/v1/instance/service-accounts/default/token`` with
   ``Metadata-Flavor: Google``; google-auth honours ``GCE_METADATA_HOST``.

google-auth is blocking (``requests``), so a refresh runs in a worker thread; the
single flight, the refresh margin and the renewal on a 401 are
:class:`proxy.auth.tokens.TokenCredentials`'.  The gcloud user login is not looked up
implicitly: a proxy should run as a service account.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from proxy.auth.tokens import DEFAULT_LIFETIME, Token, TokenCredentials, usable_for
from proxy.errors import UpstreamAuthFailed
from proxy.settings import Settings, SettingsError

EXTRA = "pip install 'dicomweb-proxy[google]'"
KEY_FILE_ENV = "GOOGLE_APPLICATION_CREDENTIALS"
METADATA_HOST_ENVS = ("GCE_METADATA_HOST", "GCE_METADATA_ROOT")  # google-auth's order
DEFAULT_METADATA_HOST = "metadata.google.internal"
# RFC 6750 section 2.1 b64token: a token that could not go into a header is refused.
_B64TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")
# Library messages are repeated only when they are one short line of printable text.
_ERROR_TEXT = re.compile(r"^[\x20-\x7e]{1,200}$")
# google-auth logs request headers and bodies at DEBUG; never let them through.
_LIBRARY_LOGGERS = ("google.auth", "google.oauth2")


def credentials_from(
    settings: Settings, environ: Mapping[str, str], clock: Callable[[], float] = time.monotonic
) -> GoogleCredentials:
    """The provider for ``settings``; SettingsError names the option or variable at fault."""
    sdk = _sdk()
    scopes = settings.google_scope.split()
    path, origin = settings.google_credentials_file, "--google-credentials-file"
    if not path and environ.get(KEY_FILE_ENV):
        path, origin = environ[KEY_FILE_ENV], KEY_FILE_ENV
    _quiet_library_logs()
    if path:
        loaded, source = _from_file(sdk, path, origin, scopes)
        endpoint = "the Google token endpoint"
    else:
        loaded = sdk.compute_engine.Credentials(scopes=scopes)
        source = f"metadata server at {_metadata_host(environ)}"
        endpoint = "the metadata server"
    return GoogleCredentials(
        loaded, source, endpoint, timeout=settings.upstream_timeout, clock=clock
    )


def _sdk() -> Any:
    """The google-auth modules this mode uses, or one line saying which extra to install."""
    try:
        import google.auth
        import google.auth.compute_engine
        import google.auth.exceptions
        import google.auth.transport.requests
    except ImportError:
        raise SettingsError(
            f"--upstream-auth google: the google-auth library is not installed ({EXTRA})"
        ) from None
    return google.auth


def _from_file(sdk: Any, path: str, origin: str, scopes: list[str]) -> tuple[Any, str]:
    """Parse the key file now (no network), so that a bad file stops start-up.  Only the
    types named here are loaded, each by its own loader (google-auth deprecates loading
    whatever type a file claims)."""
    from google.oauth2 import credentials as user
    from google.oauth2 import service_account

    try:
        kind = json.loads(Path(path).read_text(encoding="utf-8")).get("type")
        if kind == "service_account":
            load = service_account.Credentials.from_service_account_file
            loaded = load(path, scopes=scopes)  # type: ignore[no-untyped-call]
            return loaded, f"service account {loaded.service_account_email} from key file {path}"
        if kind == "authorized_user":
            loaded = user.Credentials.from_authorized_user_file(path, scopes=scopes)  # type: ignore[no-untyped-call]
            return loaded, f"user credentials from {path}"
    except (OSError, ValueError, AttributeError, sdk.exceptions.GoogleAuthError) as exc:
        why = _first(exc) if not isinstance(exc, OSError) else (exc.strerror or "unreadable")
        raise SettingsError(f"{origin}: {path} is not a usable credentials file: {why}") from None
    raise SettingsError(
        f"{origin}: {path} is not a service-account key (type {kind!r}; use "
        "service_account, or authorized_user from gcloud)"
    )


def _metadata_host(environ: Mapping[str, str]) -> str:
    for name in METADATA_HOST_ENVS:
        if environ.get(name):
            return environ[name]
    return DEFAULT_METADATA_HOST


def _quiet_library_logs() -> None:
    for name in _LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(max(logger.getEffectiveLevel(), logging.INFO))


class GoogleCredentials(TokenCredentials):
    """Bearer access tokens from google-auth credentials, refreshed in a thread."""

    kind = "Google access token"

    def __init__(
        self,
        sdk_credentials: Any,
        source: str,
        endpoint: str,
        *,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(clock=clock)
        self._sdk_credentials = sdk_credentials
        self.source = source
        self._endpoint = endpoint
        self._request = _request(timeout)

    def __repr__(self) -> str:
        return f"GoogleCredentials(source={self.source!r})"

    def describe(self) -> str:
        return f"google {self.source}"

    async def obtain(self, started: float) -> Token:
        value, lifetime = await asyncio.to_thread(self._refresh)
        return Token(value=value, refresh_at=started + usable_for(lifetime))

    async def close(self) -> None:
        await super().close()
        self._request.session.close()

    def _refresh(self) -> tuple[str, float]:
        """Blocking: one token request; the token and the seconds it lives."""
        import google.auth.exceptions as errors

        credentials = self._sdk_credentials
        try:
            credentials.refresh(self._request)
        except errors.RefreshError as exc:
            raise UpstreamAuthFailed(f"{self._endpoint} refused: {_reason(exc)}") from None
        except errors.TransportError:
            raise UpstreamAuthFailed(f"{self._endpoint} is unreachable") from None
        except (errors.GoogleAuthError, ValueError) as exc:
            raise UpstreamAuthFailed(f"{self._endpoint}: {type(exc).__name__}") from None
        token = credentials.token
        if not isinstance(token, str) or not _B64TOKEN.match(token):
            raise UpstreamAuthFailed(f"{self._endpoint} sent no usable access token")
        return token, _seconds_left(credentials.expiry)


def _request(limit: float) -> Any:
    """google-auth's requests transport, every call bounded by ``--upstream-timeout``
    (its own default is 120 s; the metadata server calls ask for 3 s)."""
    import google.auth.transport.requests as transport

    class BoundedRequest(transport.Request):
        def __call__(
            self,
            url: Any,
            method: Any = "GET",
            body: Any = None,
            headers: Any = None,
            timeout: Any = None,
            **kwargs: Any,
        ) -> Any:
            bounded = min(timeout or limit, limit)
            call: Any = super().__call__  # google-auth's transport is untyped
            return call(url, method, body, headers, timeout=bounded, **kwargs)

    return BoundedRequest()


def _seconds_left(expiry: datetime.datetime | None) -> float:
    """google-auth keeps ``expiry`` as a naive UTC datetime; None: not said."""
    if expiry is None:
        return DEFAULT_LIFETIME
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    return (expiry - now).total_seconds()


def _reason(exc: Exception) -> str:
    """The OAuth2 error code (and description) google-auth received, when it is plain
    text; never the response itself."""
    details = exc.args[1] if len(exc.args) > 1 else None
    if isinstance(details, dict) and isinstance(details.get("error"), str):
        parts = [details["error"], str(details.get("error_description") or "")]
        text = ": ".join(part for part in parts if part)
        if _ERROR_TEXT.match(text):
            return text
    return _first(exc)


def _first(exc: Exception) -> str:
    """The first line of a library message, when it is plain text, else its class name."""
    text = str(exc.args[0] if exc.args else exc).splitlines()[0] if str(exc) else ""
    text = text.strip()[:200]
    return text if text and _ERROR_TEXT.match(text) else type(exc).__name__
