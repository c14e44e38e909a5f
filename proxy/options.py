"""The option table: :class:`Settings`, one dataclass field per option of SPEC section 1.

A field's metadata (:func:`opt`) names its parser and help text; the command line, the
environment, the TOML file and the generated reference (``docs/reference/configuration.md``,
``python -m harness.configref``) are all read from it, so they cannot drift apart.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from proxy.values import (
    choice,
    mask_userinfo,
    opt,
    parse_base_path,
    parse_bool,
    parse_duration,
    parse_listen,
    parse_optional_str,
    parse_optional_url,
    parse_origins,
    parse_positive_int,
    parse_size,
    parse_str,
    parse_url,
    parse_viewer_dir,
    parse_workers,
)

ENV_PREFIX = "DICOMWEB_PROXY_"


@dataclass(frozen=True)
class Settings:
    """Every option of SPEC section 1.  Built only by :func:`load`; never mutated."""

    upstream_url: str = field(
        default="", metadata=opt("upstream DICOMweb base URL (required)", parse_url)
    )
    listen: str = field(
        default="127.0.0.1:8080", metadata=opt("address:port to serve on", parse_listen)
    )
    base_path: str = field(
        default="/dicom-web", metadata=opt("path under which DICOMweb is served", parse_base_path)
    )
    public_url: str | None = field(
        default=None, metadata=opt("external base URL used when rewriting", parse_optional_url)
    )
    trust_forwarded: bool = field(
        default=False,
        metadata=opt("honour Forwarded / X-Forwarded-* from clients", parse_bool, flag=True),
    )
    workers: int = field(
        default=1, metadata=opt("worker processes, or auto (one per CPU)", parse_workers)
    )
    data_dir: str = field(
        default="./.dicomweb-proxy", metadata=opt("holds cache/, spool/, dead-letter/", parse_str)
    )
    cache_dir: str | None = field(
        default=None, metadata=opt("disk cache location", parse_optional_str)
    )
    cache_size: int = field(
        default=10 * 1024**3, metadata=opt("upper bound of the disk cache", parse_size)
    )
    no_cache: bool = field(
        default=False, metadata=opt("forward everything, cache nothing", parse_bool, flag=True)
    )
    no_express: bool = field(
        default=False, metadata=opt("no express lane for repeated hits", parse_bool, flag=True)
    )
    metadata_ttl: float = field(
        default=60.0, metadata=opt("freshness of non-final study/series entries", parse_duration)
    )
    finalized_after: float = field(
        default=86400.0,
        metadata=opt("a study unchanged this long is final", parse_duration),
    )
    qido_ttl: float = field(
        default=0.0, metadata=opt("cache QIDO-RS responses this long (0 = never)", parse_duration)
    )
    stale_if_error: float = field(
        default=3600.0,
        metadata=opt("serve expired entries this long when upstream fails", parse_duration),
    )
    upstream_timeout: float = field(
        default=30.0,
        metadata=opt("connect + first byte; idle timeout on bodies", parse_duration),
    )
    upstream_connections: int = field(
        default=64, metadata=opt("upstream connection pool size", parse_positive_int)
    )
    upstream_ca_file: str | None = field(
        default=None, metadata=opt("CA bundle for a TLS upstream", parse_optional_str)
    )
    upstream_insecure: bool = field(
        default=False,
        metadata=opt("do not verify the upstream TLS certificate", parse_bool, flag=True),
    )
    upstream_auth: str = field(
        default="none",
        metadata=opt(
            "upstream credentials",
            choice("none", "passthrough", "basic", "bearer", "oauth2", "google", "azure", "aws"),
        ),
    )
    inbound_auth: str = field(
        default="none", metadata=opt("client authentication", choice("none", "basic", "bearer"))
    )
    inbound_htpasswd: str | None = field(
        default=None,
        metadata=opt(
            "htpasswd file for --inbound-auth basic (bcrypt, sha256/512-crypt)", parse_optional_str
        ),
    )
    inbound_tokens_file: str | None = field(
        default=None,
        metadata=opt("bearer tokens for --inbound-auth bearer, one per line", parse_optional_str),
    )
    upstream_username: str | None = field(
        default=None, metadata=opt("user for --upstream-auth basic", parse_optional_str)
    )
    upstream_password: str | None = field(
        default=None,
        metadata=opt("password for --upstream-auth basic", parse_optional_str, secret=True),
    )
    upstream_password_file: str | None = field(
        default=None, metadata=opt("file holding the upstream password", parse_optional_str)
    )
    upstream_token: str | None = field(
        default=None,
        metadata=opt("token for --upstream-auth bearer", parse_optional_str, secret=True),
    )
    upstream_token_file: str | None = field(
        default=None,
        metadata=opt("file holding the upstream token, re-read on change", parse_optional_str),
    )
    oauth2_token_url: str | None = field(
        default=None, metadata=opt("OAuth2 token endpoint", parse_optional_url)
    )
    oauth2_client_id: str | None = field(
        default=None, metadata=opt("OAuth2 client id", parse_optional_str)
    )
    oauth2_client_secret: str | None = field(
        default=None, metadata=opt("OAuth2 client secret", parse_optional_str, secret=True)
    )
    oauth2_client_secret_file: str | None = field(
        default=None, metadata=opt("file holding the OAuth2 client secret", parse_optional_str)
    )
    oauth2_scope: str | None = field(
        default=None, metadata=opt("OAuth2 scope(s), space separated", parse_optional_str)
    )
    oauth2_client_auth: str = field(
        default="basic",
        metadata=opt("how the client authenticates to the token endpoint", choice("basic", "body")),
    )
    google_credentials_file: str | None = field(
        default=None,
        metadata=opt(
            "google: service-account key file (else GOOGLE_APPLICATION_CREDENTIALS, else "
            "the metadata server)",
            parse_optional_str,
        ),
    )
    google_scope: str = field(
        default="https://www.googleapis.com/auth/cloud-healthcare",
        metadata=opt("google: OAuth2 scope(s) of the token, space separated", parse_str),
    )
    azure_tenant_id: str | None = field(
        default=None,
        metadata=opt("azure: Entra ID tenant (else AZURE_TENANT_ID)", parse_optional_str),
    )
    azure_client_id: str | None = field(
        default=None,
        metadata=opt(
            "azure: app or user-assigned identity client id (else AZURE_CLIENT_ID)",
            parse_optional_str,
        ),
    )
    azure_client_secret: str | None = field(
        default=None,
        metadata=opt("azure: Entra ID client secret", parse_optional_str, secret=True),
    )
    azure_client_secret_file: str | None = field(
        default=None,
        metadata=opt("azure: file holding the Entra ID client secret", parse_optional_str),
    )
    aws_region: str | None = field(
        default=None,
        metadata=opt(
            "aws: region to sign for (else the AWS config, else the upstream host)",
            parse_optional_str,
        ),
    )
    admin_token: str | None = field(
        default=None,
        metadata=opt("bearer token enabling /admin/*", parse_optional_str, secret=True),
    )
    admin_token_file: str | None = field(
        default=None, metadata=opt("file holding the admin token", parse_optional_str)
    )
    cors_origins: tuple[str, ...] = field(
        default=(), metadata=opt("comma list of allowed browser origins", parse_origins)
    )
    stow_max_instances: int = field(
        default=50, metadata=opt("instances per upstream STOW request", parse_positive_int)
    )
    stow_max_bytes: int = field(
        default=100 * 1024**2, metadata=opt("body bytes per upstream STOW request", parse_size)
    )
    stow_concurrency: int = field(
        default=2, metadata=opt("upstream STOW batches in flight", parse_positive_int)
    )
    stow_retries: int = field(
        default=3, metadata=opt("attempts per STOW batch", parse_positive_int)
    )
    stow_retry_delay: float = field(
        default=0.5,
        metadata=opt("first STOW retry delay; doubles per attempt, with jitter", parse_duration),
    )
    max_body: int = field(
        default=0, metadata=opt("reject larger request bodies with 413 (0 = none)", parse_size)
    )
    dead_letter_dir: str | None = field(
        default=None, metadata=opt("permanently failed STOW instances", parse_optional_str)
    )
    metrics_listen: str | None = field(
        default=None, metadata=opt("serve /metrics on this address:port", parse_optional_str)
    )
    log_format: str = field(
        default="text", metadata=opt("request log format", choice("text", "json"))
    )
    log_level: str = field(
        default="info",
        metadata=opt("log level", choice("debug", "info", "warning", "error")),
    )
    prefetch: str = field(
        default="off",
        metadata=opt(
            "fetch the rest of a series/study on a miss", choice("off", "series", "study")
        ),
    )
    viewer_dir: str | None = field(
        default=None, metadata=opt("serve a prebuilt viewer at /viewer/", parse_viewer_dir)
    )
    shutdown_grace: float = field(
        default=30.0,
        metadata=opt("how long in-flight requests may finish on SIGTERM", parse_duration),
    )
    client_timeout: float = field(
        default=60.0,
        metadata=opt(
            "a client must send its request headers within this long (and an idle "
            "keep-alive connection is closed after it); a request body may pause at most "
            "this long (408)",
            parse_duration,
        ),
    )

    # -- derived paths -----------------------------------------------------------

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else Path(self.data_dir) / "cache"

    @property
    def spool_path(self) -> Path:
        return Path(self.data_dir) / "spool"

    @property
    def dead_letter_path(self) -> Path:
        if self.dead_letter_dir:
            return Path(self.dead_letter_dir)
        return Path(self.data_dir) / "dead-letter"

    @property
    def listen_host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def listen_port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    def __repr__(self) -> str:
        """Secrets masked: a Settings may end up in a traceback or a debug log."""
        shown = ", ".join(f"{name}={value!r}" for name, value in self.masked().items())
        return f"Settings({shown})"

    def masked(self) -> dict[str, object]:
        """The effective configuration with every secret replaced, for start-up logs."""
        shown: dict[str, object] = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.metadata["secret"] and value:
                value = "***"
            elif isinstance(value, str) and "@" in value and "://" in value:
                value = mask_userinfo(value)
            shown[item.name] = value
        return shown


OPTION_FIELDS = {item.name: item for item in dataclasses.fields(Settings)}


def option_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def option_env(name: str) -> str:
    return ENV_PREFIX + name.upper()
