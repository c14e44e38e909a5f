"""``--upstream-auth azure``: Entra ID tokens for Azure Health Data Services DICOM.

Every source issues an OAuth2 bearer token for the resource
``https://dicom.healthcareapis.azure.com``; the token endpoint speaks RFC 6749, so this
reuses :class:`proxy.auth.oauth2.EndpointCredentials` (async, single flight, the 401
renewal) rather than ``azure-identity``: no thread per refresh, no MSAL instance
discovery call, and the federated token file read on every refresh (azure-identity's
WorkloadIdentityCredential keeps it for ten minutes).  Sources, first match wins:

- client secret (``--azure-client-secret`` / ``-file``): client credentials grant at
  ``{authority}/{tenant}/oauth2/v2.0/token`` with scope ``{resource}/.default``;
- AKS workload identity (``AZURE_FEDERATED_TOKEN_FILE``, set by the webhook with
  ``AZURE_CLIENT_ID``, ``AZURE_TENANT_ID``, ``AZURE_AUTHORITY_HOST``): the same grant
  with the projected service-account token as a client assertion (RFC 7523 section
  2.2, ``client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer``);
- managed identity on App Service / Container Apps (``IDENTITY_ENDPOINT`` and
  ``IDENTITY_HEADER``, api-version 2019-08-01);
- managed identity through IMDS (VMs, scale sets, AKS node identity): ``GET
  http://169.254.169.254/metadata/identity/oauth2/token`` with ``Metadata: true``
  (api-version 2018-02-01; ``AZURE_POD_IDENTITY_AUTHORITY_HOST`` moves it, as in
  azure-identity).  ``--azure-client-id`` picks a user-assigned identity.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from proxy.auth.oauth2 import EndpointCredentials, TokenRequest, parse_token_response
from proxy.auth.tokens import Token
from proxy.auth.watched import Secret
from proxy.errors import UpstreamAuthFailed
from proxy.settings import SettingsError

RESOURCE = "https://dicom.healthcareapis.azure.com"
SCOPE = RESOURCE + "/.default"
PUBLIC_CLOUD = "https://login.microsoftonline.com"
IMDS = "http://169.254.169.254"
IMDS_PATH = "/metadata/identity/oauth2/token"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ENTRA = "the Entra ID token endpoint"


@dataclass(frozen=True)
class Source:
    """How a token is asked for; ``describe`` names it for ``check`` and logs."""

    describe: str
    request: Callable[[], TokenRequest]


class AzureCredentials(EndpointCredentials):
    kind = "Entra ID token"

    def __init__(
        self,
        source: Source,
        *,
        timeout: float = 30.0,
        ssl_context: ssl.SSLContext | bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(timeout=timeout, ssl_context=ssl_context, clock=clock)
        self.source = source

    def __repr__(self) -> str:
        return f"AzureCredentials({self.source.describe!r})"

    def describe(self) -> str:
        return f"azure {self.source.describe}"

    def token_request(self) -> TokenRequest:
        return self.source.request()

    async def obtain(self, started: float) -> Token:
        request = self.token_request()
        status, document = await self._send(request)
        return parse_token_response(status, _with_expires_in(document), started, request.endpoint)


def client_secret(authority: str, tenant: str, client: str, secret: Secret) -> Source:
    url = _token_url(authority, tenant)

    def request() -> TokenRequest:
        form = {"grant_type": "client_credentials", "client_id": client, "scope": SCOPE}
        form["client_secret"] = secret.value()
        return TokenRequest(url, form, {"Accept": "application/json"}, ENTRA)

    return Source(f"client secret of app {client} in tenant {tenant}", request)


def workload_identity(authority: str, tenant: str, client: str, token_file: str) -> Source:
    """The assertion is read from the file at every token request: the kubelet
    rotates the projected token, and an expired assertion is refused."""
    url = _token_url(authority, tenant)

    def request() -> TokenRequest:
        form = {"grant_type": "client_credentials", "client_id": client, "scope": SCOPE}
        form["client_assertion_type"] = ASSERTION_TYPE
        form["client_assertion"] = _read_assertion(token_file)
        return TokenRequest(url, form, {"Accept": "application/json"}, ENTRA)

    describe = f"workload identity (federated token file {token_file}) of app {client}"
    return Source(f"{describe} in tenant {tenant}", request)


def app_service(endpoint: str, header: Secret, client: str | None) -> Source:
    query = {"api-version": "2019-08-01", "resource": RESOURCE}
    if client:
        query["client_id"] = client
    url = f"{endpoint}?{urlencode(query)}"

    def request() -> TokenRequest:
        headers = {"X-IDENTITY-HEADER": header.value(), "Accept": "application/json"}
        return TokenRequest(url, None, headers, "the managed identity endpoint")

    return Source(f"managed identity{_user_assigned(client)} at {endpoint}", request)


def imds(host: str, client: str | None) -> Source:
    query = {"api-version": "2018-02-01", "resource": RESOURCE}
    if client:
        query["client_id"] = client
    url = f"{host.rstrip('/')}{IMDS_PATH}?{urlencode(query)}"

    def request() -> TokenRequest:
        headers = {"Metadata": "true", "Accept": "application/json"}
        return TokenRequest(url, None, headers, "the Azure instance metadata service")

    return Source(f"managed identity{_user_assigned(client)} through IMDS at {host}", request)


def source_from(
    environ: Mapping[str, str],
    tenant: str | None,
    client: str | None,
    secret: Secret | None,
) -> Source:
    """The first source the options and environment configure (module docstring)."""
    authority = environ.get("AZURE_AUTHORITY_HOST") or PUBLIC_CLOUD
    token_file = environ.get("AZURE_FEDERATED_TOKEN_FILE")
    if secret is not None or token_file:
        because = "a client secret" if secret is not None else "AZURE_FEDERATED_TOKEN_FILE"
        if not tenant:
            raise _missing("--azure-tenant-id", "AZURE_TENANT_ID", because)
        if not client:
            raise _missing("--azure-client-id", "AZURE_CLIENT_ID", because)
        if secret is not None:
            return client_secret(authority, tenant, client, secret)
        return workload_identity(authority, tenant, client, str(token_file))
    if environ.get("IDENTITY_ENDPOINT") and environ.get("IDENTITY_HEADER"):
        header = Secret(inline=environ["IDENTITY_HEADER"])
        return app_service(environ["IDENTITY_ENDPOINT"], header, client)
    return imds(environ.get("AZURE_POD_IDENTITY_AUTHORITY_HOST") or IMDS, client)


def _missing(option: str, variable: str, because: str) -> SettingsError:
    return SettingsError(
        f"{option}: required with --upstream-auth azure and {because} (or {variable})"
    )


def _token_url(authority: str, tenant: str) -> str:
    return f"{authority.rstrip('/')}/{tenant}/oauth2/v2.0/token"


def _user_assigned(client: str | None) -> str:
    return f" (client id {client})" if client else ""


def _read_assertion(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise UpstreamAuthFailed(f"AZURE_FEDERATED_TOKEN_FILE: cannot read {path}: {why}") from None


def _with_expires_in(document: Any) -> Any:
    """App Service answers ``expires_on`` (seconds since the epoch) without
    ``expires_in``; RFC 6749 section 5.1 only knows the latter."""
    if not isinstance(document, dict) or "expires_in" in document:
        return document
    expires_on = document.get("expires_on")
    try:
        left = float(expires_on) - time.time()  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return document
    return {**document, "expires_in": max(left, 0.0)}
