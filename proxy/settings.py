"""Frozen settings, built once from flags, ``DICOMWEB_PROXY_*`` and a TOML file.

Precedence (SPEC section 1): flag > environment > file > default.  Every option is a
field of :class:`Settings`; its metadata names the parser and the help text, so the
command line, the environment and the file can never drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yarl import URL

ENV_PREFIX = "DICOMWEB_PROXY_"


class SettingsError(ValueError):
    """An invalid option value; the message names the option."""


# -- value parsers -------------------------------------------------------------

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "": 1.0}
_NUMBER_UNIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: object) -> int:
    """``10GiB`` -> bytes.  Accepts KiB/MiB/GiB/TiB, KB/MB/GB/TB and plain bytes."""
    match = _NUMBER_UNIT.match(str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(f"invalid size {text!r} (use e.g. 512MiB, 10GiB)")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def format_size(count: float) -> str:
    """Bytes -> ``512 B``, ``1.5 MiB``: the units :func:`parse_size` reads."""
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def parse_duration(text: object) -> float:
    """``500ms``, ``30s``, ``5m``, ``24h``, ``7d`` -> seconds."""
    match = _NUMBER_UNIT.match(str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _DURATION_UNITS:
        raise ValueError(f"invalid duration {text!r} (use e.g. 500ms, 30s, 5m, 24h, 7d)")
    return float(match.group(1)) * _DURATION_UNITS[unit]


def parse_int(text: object) -> int:
    value = int(str(text))
    if value < 0:
        raise ValueError(f"must not be negative, got {value}")
    return value


def parse_positive_int(text: object) -> int:
    value = parse_int(text)
    if value == 0:
        raise ValueError("must be at least 1")
    return value


def parse_workers(text: object) -> int:
    """A positive count, or ``auto``: one per CPU this process may use (the image default)."""
    if str(text).strip().lower() == "auto":
        return available_cpus()
    return parse_positive_int(text)


def available_cpus(cgroup_cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """CPUs in this process's affinity mask, capped by a cgroup v2 CPU quota when one is set.

    ``os.cpu_count()`` reports the host's CPUs; a container limited to 2 CPUs on a
    64-CPU node must not start 64 workers.
    """
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        quota, period = cgroup_cpu_max.read_text().split()[:2]
        if quota != "max":
            count = min(count or 1, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota: the affinity mask is the limit
    return max(1, count or 1)


def parse_bool(text: object) -> bool:
    if isinstance(text, bool):
        return text
    lowered = str(text).strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"invalid boolean {text!r} (use true or false)")


def parse_url(text: object) -> str:
    url = URL(str(text).strip())
    if url.scheme not in {"http", "https"} or not url.host:
        raise ValueError(f"invalid URL {text!r} (need http:// or https:// and a host)")
    return str(url.with_query(None).with_fragment(None)).rstrip("/")


def parse_optional_url(text: object) -> str | None:
    return parse_url(text) if str(text).strip() else None


def parse_listen(text: object) -> str:
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"invalid address {text!r} (use host:port)")
    return str(text)


def parse_base_path(text: object) -> str:
    path = "/" + str(text).strip().strip("/")
    if ".." in path.split("/"):
        raise ValueError(f"invalid path {text!r}")
    return path if path != "/" else ""


def parse_str(text: object) -> str:
    return str(text)


def parse_optional_str(text: object) -> str | None:
    return str(text) if str(text) else None


def parse_viewer_dir(text: object) -> str | None:
    """A directory holding a prebuilt web viewer: it must have an ``index.html``."""
    if not str(text).strip():
        return None
    if not Path(str(text), "index.html").is_file():
        raise ValueError(f"no index.html in {text!r} (give the viewer's dist/ directory)")
    return str(text)


def parse_origins(text: object) -> tuple[str, ...]:
    if isinstance(text, list):
        return tuple(str(item).strip() for item in text if str(item).strip())
    return tuple(item.strip() for item in str(text).split(",") if item.strip())


def choice(*allowed: str) -> Callable[[object], str]:
    def parse(text: object) -> str:
        value = str(text).strip().lower()
        if value not in allowed:
            raise ValueError(f"invalid value {text!r} (choose from {', '.join(allowed)})")
        return value

    return parse


def opt(
    help: str,
    parse: Callable[[object], Any],
    *,
    secret: bool = False,
    flag: bool = False,
) -> dict[str, Any]:
    """Field metadata: how one option is parsed and documented."""
    return {"help": help, "parse": parse, "secret": secret, "flag": flag}


# -- the settings --------------------------------------------------------------


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
        default="./.dicomweb-proxy", metadata=opt("cache, spool, dead-letter home", parse_str)
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
        default=False,
        metadata=opt(
            "answer repeated cache hits through aiohttp's full stack too (no express lane)",
            parse_bool,
            flag=True,
        ),
    )
    metadata_ttl: float = field(
        default=60.0, metadata=opt("freshness of non-final study/series entries", parse_duration)
    )
    finalized_after: float = field(
        default=86400.0,
        metadata=opt("a study unchanged this long is final", parse_duration),
    )
    qido_ttl: float = field(
        default=0.0, metadata=opt("cache QIDO-RS responses this long", parse_duration)
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
                value = _mask_userinfo(value)
            shown[item.name] = value
        return shown


def _mask_userinfo(url: str) -> str:
    """``https://user:secret@host`` -> ``https://***@host``: URLs can carry credentials."""
    scheme, sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    if "@" not in authority:
        return url
    return f"{scheme}{sep}***@{authority.rpartition('@')[2]}{slash}{path}"


OPTION_FIELDS = {item.name: item for item in dataclasses.fields(Settings)}


def option_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def option_env(name: str) -> str:
    return ENV_PREFIX + name.upper()


def add_arguments(parser: argparse.ArgumentParser, names: Sequence[str] | None = None) -> None:
    """Add one flag per option; defaults stay ``None`` so precedence can be applied."""
    parser.add_argument("--config", metavar="FILE", help="TOML file with option keys")
    for name in names or OPTION_FIELDS:
        meta = OPTION_FIELDS[name].metadata
        if meta["flag"]:
            parser.add_argument(
                option_flag(name), dest=name, action="store_const", const=True, help=meta["help"]
            )
        else:
            parser.add_argument(option_flag(name), dest=name, metavar="VALUE", help=meta["help"])


def load(
    flags: argparse.Namespace,
    environ: Mapping[str, str],
    *,
    require_upstream: bool = True,
) -> Settings:
    """Resolve every option by precedence and parse it; raise SettingsError naming it."""
    config_file = getattr(flags, "config", None) or environ.get(ENV_PREFIX + "CONFIG")
    file_values = _read_toml(config_file) if config_file else {}
    values: dict[str, Any] = {}
    for name, item in OPTION_FIELDS.items():
        raw = _raw_value(name, flags, environ, file_values)
        if raw is None:
            continue
        try:
            values[name] = item.metadata["parse"](raw)
        except ValueError as exc:
            raise SettingsError(f"{option_flag(name)}: {exc}") from None
    if require_upstream and not values.get("upstream_url"):
        raise SettingsError(f"--upstream-url: required (or set {option_env('upstream_url')})")
    return Settings(**values)


def _raw_value(
    name: str, flags: argparse.Namespace, environ: Mapping[str, str], file_values: dict[str, Any]
) -> object | None:
    flag_value: object | None = getattr(flags, name, None)
    if flag_value is not None:
        return flag_value
    if option_env(name) in environ:
        return environ[option_env(name)]
    value: object | None = file_values.get(name)
    return value


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise SettingsError(f"--config: cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"--config: {path} is not valid TOML: {exc}") from None
    normalized = {key.replace("-", "_"): value for key, value in data.items()}
    unknown = sorted(set(normalized) - set(OPTION_FIELDS))
    if unknown:
        raise SettingsError(f"--config: unknown option {unknown[0]!r} in {path}")
    return normalized
