"""Settings -> inbound gate, upstream credentials, partitioner; start-up validation.

Every problem raises :class:`SettingsError` naming the option, which the CLI turns
into one line and exit status 2 (SPEC section 1).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from pathlib import Path

from proxy.auth import aws, azure, google
from proxy.auth.credentials import BasicCredentials, BearerCredentials, Credentials
from proxy.auth.inbound import Gate, HtpasswdGate, TokenGate
from proxy.auth.oauth2 import ClientConfig, OAuth2Credentials
from proxy.auth.partition import Partitioner, load_key
from proxy.auth.watched import Secret, WatchedFile
from proxy.settings import Settings, SettingsError, option_flag


def validate(settings: Settings) -> None:
    """Build (and drop) everything once so that a bad option stops start-up."""
    inbound_from(settings)
    credentials_from(settings)


def inbound_from(settings: Settings) -> Gate | None:
    if settings.inbound_auth == "basic":
        path = _required(settings, "inbound_htpasswd", "--inbound-auth basic")
        gate: Gate = HtpasswdGate(WatchedFile(path, "inbound_htpasswd", allow_empty=True))
        if gate.size:
            return gate
        raise SettingsError(f"--inbound-htpasswd: {path} holds no usable user")
    if settings.inbound_auth == "bearer":
        path = _required(settings, "inbound_tokens_file", "--inbound-auth bearer")
        gate = TokenGate(WatchedFile(path, "inbound_tokens_file", allow_empty=True))
        if gate.size:
            return gate
        raise SettingsError(f"--inbound-tokens-file: {path} holds no token")
    return None


def credentials_from(
    settings: Settings, environ: Mapping[str, str] | None = None
) -> Credentials | None:
    """None for ``none`` and ``passthrough`` (the client's header is used, if any).

    ``environ`` (default: the process environment) is read only for the variables the
    cloud platforms define (GOOGLE_APPLICATION_CREDENTIALS, AZURE_*, ...); the SDKs
    read theirs from the process environment themselves.
    """
    environ = os.environ if environ is None else environ
    mode = settings.upstream_auth
    if mode == "basic":
        username = _required(settings, "upstream_username", "--upstream-auth basic")
        if ":" in username:
            raise SettingsError("--upstream-username: must not contain ':' (RFC 7617)")
        return BasicCredentials(username, _secret(settings, "upstream_password", mode))
    if mode == "bearer":
        return BearerCredentials(_secret(settings, "upstream_token", mode))
    if mode == "oauth2":
        return _oauth2(settings)
    if mode == "google":
        return google.credentials_from(settings, environ)
    if mode == "azure":
        return _azure(settings, environ)
    if mode == "aws":
        return aws.credentials_from(settings)
    return None


def partitioner_from(settings: Settings) -> Partitioner:
    """Per-credential partitions only with passthrough (SPEC section 3)."""
    if settings.upstream_auth != "passthrough":
        return Partitioner(None)
    return Partitioner(load_key(Path(settings.data_dir)))


def _oauth2(settings: Settings) -> OAuth2Credentials:
    need = "--upstream-auth oauth2"
    config = ClientConfig(
        token_url=_required(settings, "oauth2_token_url", need),
        client_id=_required(settings, "oauth2_client_id", need),
        secret=_secret(settings, "oauth2_client_secret", "oauth2"),
        scope=settings.oauth2_scope,
        client_auth=settings.oauth2_client_auth,
    )
    return OAuth2Credentials(
        config, timeout=settings.upstream_timeout, ssl_context=_token_ssl(settings)
    )


def _azure(settings: Settings, environ: Mapping[str, str]) -> azure.AzureCredentials:
    has_secret = settings.azure_client_secret or settings.azure_client_secret_file
    source = azure.source_from(
        environ,
        settings.azure_tenant_id or environ.get("AZURE_TENANT_ID"),
        settings.azure_client_id or environ.get("AZURE_CLIENT_ID"),
        _secret(settings, "azure_client_secret", "azure") if has_secret else None,
    )
    return azure.AzureCredentials(
        source, timeout=settings.upstream_timeout, ssl_context=_token_ssl(settings)
    )


def _token_ssl(settings: Settings) -> ssl.SSLContext:
    """The token endpoint is usually a public identity provider: system CAs, plus
    ``--upstream-ca-file`` for a private one.  Always verified: the client secret
    must never go to a host that could not prove who it is."""
    context = ssl.create_default_context()
    if settings.upstream_ca_file:
        try:
            context.load_verify_locations(cafile=settings.upstream_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise SettingsError(f"--upstream-ca-file: cannot load: {exc}") from None
    return context


def _required(settings: Settings, name: str, because: str) -> str:
    value = getattr(settings, name)
    if not value:
        raise SettingsError(f"{option_flag(name)}: required with {because}")
    return str(value)


def _secret(settings: Settings, name: str, mode: str) -> Secret:
    """``--x`` or ``--x-file``, exactly one of them."""
    inline, path = getattr(settings, name), getattr(settings, name + "_file")
    if inline and path:
        raise SettingsError(
            f"{option_flag(name)}: give either {option_flag(name)} or "
            f"{option_flag(name + '_file')}, not both"
        )
    if path:
        return Secret(file=WatchedFile(path, name + "_file"))
    if inline:
        return Secret(inline=inline)
    raise SettingsError(
        f"{option_flag(name)}: required with --upstream-auth {mode} "
        f"(or {option_flag(name + '_file')})"
    )
