"""Sections 1 and 2: cache-hit and pass-through throughput and latency, under wrk.

Targets are measured in rounds (A B C, A B C, ...) and each figure is the median of
the rounds, so a burst of noise from whatever else the machine runs hits one round of
every target rather than all rounds of one.

Every request carries the headers a real client sends (:mod:`bench.clients`): OHIF in
Chromium for metadata, dicomweb-client (requests) for instances.  Besides req/s, each
round reads the CPU time the target's processes used (``/proc``): CPU per request does
not depend on the load generator, and is the figure to judge a server by on a machine
whose two cores it shares with wrk.
"""

from __future__ import annotations

import os
import statistics
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from bench import clients, wrk
from bench.data import StudySet

Pids = Callable[[], list[int]]


@dataclass(frozen=True)
class Workload:
    name: str
    paths: list[str]
    headers: dict[str, str]

    @property
    def accept(self) -> str:
        return self.headers["Accept"]


@dataclass(frozen=True)
class Target:
    """A server under load: its base URL and the processes whose CPU time is its own."""

    url: str
    pids: Pids = list


@dataclass(frozen=True)
class Summary:
    """Medians over rounds of one workload against one target."""

    rps: float
    mib_s: float
    p50_ms: float
    p99_ms: float
    rounds: int
    errors: int
    cpu_us: float | None = None  # the target's CPU per request, µs
    wrk_cores: float = 0.0  # CPU the load generator used, in cores


def workloads(study: StudySet) -> list[Workload]:
    ohif, instance = clients.OHIF_METADATA, clients.DICOMWEB_CLIENT_INSTANCE
    return [
        Workload("study metadata (JSON)", [study.metadata_path], dict(ohif)),
        Workload("64 KiB instances", study.instance_paths("64k"), dict(instance)),
        Workload("512 KiB instances", study.instance_paths("512k"), dict(instance)),
        Workload("8 MiB multi-frame", study.instance_paths("8m"), dict(instance)),
    ]


def fetch_headers(url: str, headers: dict[str, str]) -> dict[str, str]:
    """The response headers of one GET with exactly ``headers`` (the body is read and
    dropped: urllib does not decode, so its coding is whatever the server sent)."""
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()
        return {name.lower(): value for name, value in response.headers.items()}


def warm(base_url: str, load: Workload, header: str) -> str:
    """Fetch every path with the workload's own headers until ``header`` says HIT
    (fills commit after the body ends); the ``Content-Encoding`` the hits carry."""
    codings = set()
    for path in load.paths:
        for _ in range(100):
            found = fetch_headers(base_url + path, load.headers)
            if found.get(header.lower()) == "HIT":
                codings.add(found.get("content-encoding", "identity"))
                break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"{base_url}{path} never became a cache hit ({header})")
    if len(codings) != 1:
        raise RuntimeError(f"{base_url}: hits of {load.name} in several codings: {codings}")
    return codings.pop()


Measured = tuple[wrk.Result, float | None]  # a wrk run, and the target's CPU µs/request


def summarise(measured: list[Measured]) -> Summary:
    results = [result for result, _ in measured]
    cpu = [us for _, us in measured if us is not None]
    return Summary(
        rps=statistics.median(r.rps for r in results),
        mib_s=statistics.median(r.mib_s for r in results),
        p50_ms=statistics.median(r.p50_ms for r in results),
        p99_ms=statistics.median(r.p99_ms for r in results),
        rounds=len(results),
        errors=sum(r.errors for r in results),
        cpu_us=statistics.median(cpu) if cpu else None,
        wrk_cores=statistics.median(r.wrk_cores for r in results),
    )


def measure(target: Target, load: Workload, *, seconds: float, connections: int) -> Measured:
    """One wrk run, and the CPU the target's processes spent per request in it."""
    pids = target.pids()
    before = cpu_seconds(pids)
    result = wrk.run(target.url, load.paths, load.headers, seconds=seconds, connections=connections)
    spent = cpu_seconds(pids) - before
    return result, (spent / result.requests * 1e6 if pids and result.requests else None)


def alternate(
    targets: dict[str, Target],
    load: Workload,
    *,
    rounds: int,
    seconds: float,
    connections: int,
    progress: Callable[[str], None] = print,
) -> dict[str, Summary]:
    """wrk against each target in turn, ``rounds`` times; medians per target."""
    found: dict[str, list[Measured]] = {name: [] for name in targets}
    for number in range(rounds):
        for name, target in targets.items():
            result, cpu = measure(target, load, seconds=seconds, connections=connections)
            found[name].append((result, cpu))
            settle(targets.values())
            progress(
                f"  round {number + 1}/{rounds} {load.name:24} {name:18} "
                f"{result.rps:9.0f} req/s  p50 {result.p50_ms:7.2f} ms  "
                f"p99 {result.p99_ms:7.2f} ms  CPU {_us(cpu)} µs/req  "
                f"wrk {result.wrk_cores:.2f} cores  errors {result.errors}"
            )
    return {name: summarise(runs) for name, runs in found.items()}


def settle(targets: Iterable[Target], *, idle_cores: float = 0.1, limit: float = 30.0) -> None:
    """Wait until the targets' processes are idle (under ``idle_cores`` over a quarter
    second), at most ``limit`` seconds: a server still working on requests wrk gave up
    on (Orthanc gzips an 8 MiB instance for half a second of CPU, 16 at a time) must
    not take its CPU from the next target's round."""
    pids = sorted({pid for target in targets for pid in target.pids()})
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = cpu_seconds(pids)
        time.sleep(0.25)
        if cpu_seconds(pids) - before < idle_cores * 0.25:
            return


def _us(cpu: float | None) -> str:
    return f"{cpu:6.0f}" if cpu is not None else "     -"


TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User + system time of ``pids`` so far (fields 14 and 15 of /proc/PID/stat)."""
    user, system = cpu_split(pids)
    return user + system


def cpu_split(pids: list[int]) -> tuple[float, float]:
    """User and system time of ``pids`` so far, apart: the system part is the kernel's
    work (copies, TCP), the user part the server's own code."""
    user = system = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone: its time is lost, as for any process that exits
        user += int(fields[11])
        system += int(fields[12])
    return user / TICKS, system / TICKS
