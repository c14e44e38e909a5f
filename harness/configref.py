"""``python -m harness.configref [--check]``: the configuration reference, generated.

Writes ``docs/reference/configuration.md`` from the option table (:class:`proxy.options.Settings`:
each field's metadata names its parser and help text), so the reference can never name
an option the program lacks nor miss one it has.  ``--check`` writes nothing and exits 1
when the checked-in file differs from what would be written (``make docs`` regenerates it;
``tests/test_docs.py`` fails on a stale file).

What the help text is too short to say lives in :data:`NOTES` below, keyed by option;
:func:`render` refuses a note, or a group entry, for an option that does not exist, and an
option that belongs to no group.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from proxy.options import ENV_PREFIX, OPTION_FIELDS, option_env, option_flag
from proxy.values import Choice, parse_duration, parse_size

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "docs" / "reference" / "configuration.md"

# (title, options) in the order the reference shows them.
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Upstream", ("upstream_url", "upstream_timeout", "upstream_connections",
                  "upstream_ca_file", "upstream_insecure")),
    ("Serving", ("listen", "base_path", "public_url", "trust_forwarded", "workers",
                 "client_timeout", "shutdown_grace", "max_body", "cors_origins", "viewer_dir")),
    ("Storage", ("data_dir", "cache_dir", "dead_letter_dir")),
    ("Cache", ("cache_size", "no_cache", "no_express", "metadata_ttl", "finalized_after",
               "qido_ttl", "stale_if_error", "prefetch")),
    ("Upstream authentication", ("upstream_auth", "upstream_username", "upstream_password",
                                 "upstream_password_file", "upstream_token",
                                 "upstream_token_file", "oauth2_token_url", "oauth2_client_id",
                                 "oauth2_client_secret", "oauth2_client_secret_file",
                                 "oauth2_scope", "oauth2_client_auth",
                                 "google_credentials_file", "google_scope", "azure_tenant_id",
                                 "azure_client_id", "azure_client_secret",
                                 "azure_client_secret_file", "aws_region")),
    ("Inbound authentication and admin", ("inbound_auth", "inbound_htpasswd",
                                          "inbound_tokens_file", "admin_token",
                                          "admin_token_file")),
    ("STOW-RS", ("stow_max_instances", "stow_max_bytes", "stow_concurrency", "stow_retries",
                 "stow_retry_delay")),
    ("Observability", ("metrics_listen", "log_format", "log_level")),
)  # fmt: skip

# Defaults that are derived at run time rather than a value of the field.
DERIVED_DEFAULTS = {
    "upstream_url": "required",
    "public_url": "from the request's `Host`",
    "cache_dir": "`<data-dir>/cache`",
    "dead_letter_dir": "`<data-dir>/dead-letter`",
    "upstream_ca_file": "the system CAs",
    "google_credentials_file": "`GOOGLE_APPLICATION_CREDENTIALS`, else the metadata server",
    "azure_tenant_id": "`AZURE_TENANT_ID`",
    "azure_client_id": "`AZURE_CLIENT_ID`",
    "aws_region": "the AWS config, else the upstream host",
}

# What the one-line help leaves out.
NOTES = {
    "no_express": "The express lane answers a repeated fresh hit before aiohttp parses the "
    "request (see [caching](../explanation/caching.md#the-express-lane)); it is always off "
    "with `--inbound-auth`.",
    "upstream_url": "Example: `http://pacs:8042/dicom-web`.",
    "upstream_timeout": "No total deadline: a body may take as long as it keeps moving.",
    "listen": "The container image and the Helm chart use `0.0.0.0:8080`.",
    "public_url": "Otherwise `scheme://Host/base-path` of the request.",
    "trust_forwarded": "That is `Forwarded`, `X-Forwarded-Proto` and `X-Forwarded-Host`.",
    "workers": "They share the socket (`SO_REUSEPORT`) and one cache; `auto` counts the CPUs "
    "this process may use (affinity mask, capped by a cgroup v2 CPU quota).",
    "cors_origins": "`*` allowed; preflights are answered by the proxy and only listed "
    "origins are echoed.",
    "viewer_dir": "OHIF's `dist/` ([viewer](../how-to/viewer.md)).",
    "data_dir": "Also `partition.key` and, with several workers, `metrics/`.",
    "cache_size": "Least recently used entries go first; bodies being filled come on top.",
    "metadata_ttl": "Then revalidated with the study's instance count "
    "([caching](../explanation/caching.md)).",
    "finalized_after": "Measured by the study's instance count; a final study is no longer "
    "revalidated.",
    "stale_if_error": "Past expiry, when the upstream is unreachable, times out or answers 5xx.",
    "prefetch": "[Prefetch](../how-to/prefetch.md).",
    "upstream_auth": "[Upstream auth](../how-to/upstream-auth.md), "
    "[cloud archives](../how-to/cloud-archives.md).",
    "oauth2_client_auth": "Client credentials grant; `basic` = HTTP Basic (RFC 6749 §2.3.1), "
    "`body` = form fields.",
    "inbound_auth": "`basic` needs `--inbound-htpasswd`, `bearer` `--inbound-tokens-file` "
    "([inbound auth](../how-to/inbound-auth.md)).",
    "admin_token": "Requests carry it as a bearer token.",
    "azure_client_secret": "Without it: workload identity or managed identity.",
    "aws_region": "Requests are signed for the service `medical-imaging`.",
    "stow_max_bytes": "Multipart framing included; a single larger instance goes alone.",
    "stow_retry_delay": "Never below `Retry-After` (capped at 60 s).",
    "metrics_listen": "Instead of the main address ([metrics](metrics.md)).",
    "log_format": "One line per request ([logs](logs.md)).",
}

HEAD = f"""\
# Configuration reference

<!-- Generated by `python -m harness.configref` (`make docs`) from proxy/options.py;
     do not edit by hand: tests/test_docs.py fails when this file is stale. -->

Every option is a flag (`--cache-size 20GiB`), an environment variable
(`{ENV_PREFIX}CACHE_SIZE=20GiB`) or a key in a TOML file (`--config FILE`, or
`{ENV_PREFIX}CONFIG`; keys with underscores, e.g. `cache_size = "20GiB"`; an unknown key
stops start-up).  Precedence: flag > environment > file > default.  Sizes take
`KiB/MiB/GiB/TiB` or `KB/MB/GB/TB`; durations `500ms`, `30s`, `5m`, `24h`, `7d`; switches
(flags without a value) take `true`/`false` in the environment and the file.  An invalid
value stops start-up with one line naming the option, and exit status 2.  Secret options
are shown as `***` in the start-up log; prefer their `*-file` form, which keeps secrets out
of `ps` and shell history.

Subcommands and their own flags: [CLI](cli.md).
"""


def format_default(name: str) -> str:
    """The field's default in the units its parser reads back."""
    if name in DERIVED_DEFAULTS:
        return DERIVED_DEFAULTS[name]
    item = OPTION_FIELDS[name]
    value: Any = item.default  # every option has a plain default, no default_factory
    parse = item.metadata["parse"]
    if value is None or value == ():
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if parse is parse_size:
        text = _size(int(value))
    elif parse is parse_duration:
        text = _duration(float(value))
    else:
        text = str(value)
    if parse(text) != value:  # the doc must show what parses back to the default
        raise ValueError(f"{name}: default shown as {text!r} does not parse back")
    return f"`{text}`"


def _size(count: int) -> str:
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if count and count % factor == 0:
            return f"{count // factor}{unit}"
    return str(count)


def _duration(seconds: float) -> str:
    if 0 < seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    return f"{seconds:g}s"


def render() -> str:
    """The whole reference, as :data:`TARGET` should hold it."""
    _check_tables()
    parts = [HEAD]
    for title, names in GROUPS:
        parts.append(f"\n## {title}\n\n")
        parts.append("| flag | environment | TOML key | default | meaning |\n")
        parts.append("|---|---|---|---|---|\n")
        parts.extend(_row(name) for name in names)
    return "".join(parts)


def _row(name: str) -> str:
    meta = OPTION_FIELDS[name].metadata
    flag = option_flag(name) + ("" if meta["flag"] else " VALUE")
    more = []
    if isinstance(meta["parse"], Choice):
        more.append("One of " + ", ".join(f"`{word}`" for word in meta["parse"].allowed) + ".")
    if name in NOTES:
        more.append(NOTES[name])
    if meta["secret"]:
        more.append("Secret: shown as `***`.")
    meaning = " ".join([meta["help"] + ("." if more else ""), *more]).replace("|", "\\|")
    default = format_default(name)
    return f"| `{flag}` | `{option_env(name)}` | `{name}` | {default} | {meaning} |\n"


def _check_tables() -> None:
    grouped = [name for _, names in GROUPS for name in names]
    unknown = (set(grouped) | set(NOTES) | set(DERIVED_DEFAULTS)) - set(OPTION_FIELDS)
    if unknown:
        raise ValueError(f"not options: {sorted(unknown)}")
    ungrouped = [name for name in OPTION_FIELDS if name not in grouped]
    twice = {name for name in grouped if grouped.count(name) > 1}
    if ungrouped or twice:
        raise ValueError(f"options in no group: {ungrouped}; in two: {sorted(twice)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.configref", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        stale = not TARGET.is_file() or TARGET.read_text() != text
        if stale:
            print(f"{TARGET.relative_to(ROOT)} is stale: run make docs", file=sys.stderr)
        return 1 if stale else 0
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    TARGET.write_text(text)
    print(f"written: {TARGET.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
