"""Option value parsers: text (from a flag, ``DICOMWEB_PROXY_*`` or TOML) -> typed value.

Each raises ``ValueError`` with a message saying what is accepted; :func:`proxy.settings.load`
turns that into a :class:`~proxy.settings.SettingsError` naming the option.  Also here:
:func:`opt`, the field metadata the option table (:mod:`proxy.options`) is written with,
and :func:`mask_userinfo` for showing a configured URL.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from yarl import URL

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


def choice(*allowed: str) -> Choice:
    return Choice(allowed)


class Choice:
    """A parser for one of a few words; keeps them so the reference can list them."""

    def __init__(self, allowed: tuple[str, ...]) -> None:
        self.allowed = allowed

    def __call__(self, text: object) -> str:
        value = str(text).strip().lower()
        if value not in self.allowed:
            raise ValueError(f"invalid value {text!r} (choose from {', '.join(self.allowed)})")
        return value


def mask_userinfo(url: str) -> str:
    """``https://user:secret@host`` -> ``https://***@host``: URLs can carry credentials."""
    scheme, sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    if "@" not in authority:
        return url
    return f"{scheme}{sep}***@{authority.rpartition('@')[2]}{slash}{path}"


def opt(
    help: str,
    parse: Callable[[object], Any],
    *,
    secret: bool = False,
    flag: bool = False,
) -> dict[str, Any]:
    """Field metadata: how one option is parsed and documented."""
    return {"help": help, "parse": parse, "secret": secret, "flag": flag}
