"""Frozen settings, built once from flags, ``DICOMWEB_PROXY_*`` and a TOML file.

Precedence (SPEC section 1): flag > environment > file > default.  Every option is a
field of :class:`Settings` (the option table, :mod:`proxy.options`); its metadata names
the parser (:mod:`proxy.values`) and the help text, so the command line, the
environment and the file can never drift apart.  This module resolves them; the names
other modules import from here (``Settings``, ``SettingsError``, ``parse_size``, …)
stay importable from here.
"""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any

from proxy.options import ENV_PREFIX, OPTION_FIELDS, Settings, option_env, option_flag
from proxy.values import (
    available_cpus,
    choice,
    format_size,
    opt,
    parse_base_path,
    parse_bool,
    parse_duration,
    parse_int,
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

__all__ = [
    "ENV_PREFIX",
    "OPTION_FIELDS",
    "Settings",
    "SettingsError",
    "add_arguments",
    "available_cpus",
    "choice",
    "format_size",
    "load",
    "opt",
    "option_env",
    "option_flag",
    "parse_base_path",
    "parse_bool",
    "parse_duration",
    "parse_int",
    "parse_listen",
    "parse_optional_str",
    "parse_optional_url",
    "parse_origins",
    "parse_positive_int",
    "parse_size",
    "parse_str",
    "parse_url",
    "parse_viewer_dir",
    "parse_workers",
]


class SettingsError(ValueError):
    """An invalid option value; the message names the option."""


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
