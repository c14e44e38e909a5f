"""Drive ``wrk`` (a separate process) over a rotating list of URLs; read its result as JSON.

The Lua script cycles through the paths with the given request headers (those a real
client sends: its ``Accept`` and ``Accept-Encoding``) and, when done, prints one JSON
line: requests, bytes, duration, latency percentiles and errors.

Two threads by default: on this two-core machine one wrk thread is what caps nginx (it
used half a core for nginx's whole load), which is why every result also carries the
CPU wrk itself used, in cores: a load generator near its threads' limit is the
bottleneck, and the figure is then no figure.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

BINARY = shutil.which("wrk") or "/usr/bin/wrk"
THREADS = 2

SCRIPT = """\
local paths = {%(paths)s}
local headers = {%(headers)s}
local i = 0
request = function()
  i = i %% #paths + 1
  return wrk.format("GET", paths[i], headers)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %%d, "bytes": %%d, "duration_us": %%d, "p50_us": %%d, ' ..
    '"p99_us": %%d, "non2xx": %%d, "socket_errors": %%d}\\n',
    summary.requests, summary.bytes, summary.duration,
    latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
"""


@dataclass(frozen=True)
class Result:
    requests: int
    bytes: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    wrk_cores: float = 0.0  # CPU wrk itself used, in cores (user + system / wall time)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def mib_s(self) -> float:
        return self.bytes / self.seconds / 1024**2


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def script(paths: list[str], headers: Mapping[str, str]) -> str:
    return SCRIPT % {
        "paths": ", ".join(_lua_string(p) for p in paths),
        "headers": ", ".join(f"[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers.items()),
    }


def run(
    base_url: str,
    paths: list[str],
    headers: Mapping[str, str],
    *,
    seconds: float,
    connections: int,
    threads: int = THREADS,
) -> Result:
    """One wrk run against ``base_url`` requesting ``paths``; a path in ``base_url``
    (``http://host:port/nocache``) prefixes every request path."""
    origin, _, prefix = base_url.partition("://")[2].partition("/")
    base_url = base_url.partition("://")[0] + "://" + origin
    paths = [f"/{prefix.strip('/')}{path}" if prefix.strip("/") else path for path in paths]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script(paths, headers))
    try:
        command = [BINARY, "-t", str(threads), "-c", str(max(connections, threads))]
        command += ["-d", f"{max(1, round(seconds))}s", "--timeout", "30s"]
        command += ["-s", handle.name, base_url]
        before = _children_cpu()
        output = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
        used = _children_cpu() - before
    finally:
        Path(handle.name).unlink()
    result = parse(output.stdout + output.stderr)
    return replace(result, wrk_cores=used / result.seconds if result.seconds else 0.0)


def _children_cpu() -> float:
    """User + system seconds of every finished child process of this one (wrk)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def parse(output: str) -> Result:
    for line in output.splitlines():
        if line.startswith("WRKJSON "):
            raw = json.loads(line.removeprefix("WRKJSON "))
            return Result(
                requests=raw["requests"],
                bytes=raw["bytes"],
                seconds=raw["duration_us"] / 1e6,
                p50_ms=raw["p50_us"] / 1000,
                p99_ms=raw["p99_us"] / 1000,
                errors=raw["non2xx"] + raw["socket_errors"],
            )
    raise RuntimeError(f"wrk printed no result:\n{output}")
