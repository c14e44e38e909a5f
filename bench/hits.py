"""Sections 1 and 2: cache-hit and pass-through throughput and latency, under wrk.

Targets are measured in rounds (A B C, A B C, ...) and each figure is the median of
the rounds, so a burst of noise from whatever else the machine runs hits one round of
every target rather than all rounds of one.
"""

from __future__ import annotations

import statistics
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from bench import wrk
from bench.data import INSTANCE_ACCEPT, METADATA_ACCEPT, StudySet


@dataclass(frozen=True)
class Workload:
    name: str
    paths: list[str]
    accept: str


@dataclass(frozen=True)
class Summary:
    """Medians over rounds of one workload against one target."""

    rps: float
    mib_s: float
    p50_ms: float
    p99_ms: float
    rounds: int
    errors: int


def workloads(study: StudySet) -> list[Workload]:
    return [
        Workload("study metadata (JSON)", [study.metadata_path], METADATA_ACCEPT),
        Workload("64 KiB instances", study.instance_paths("64k"), INSTANCE_ACCEPT),
        Workload("512 KiB instances", study.instance_paths("512k"), INSTANCE_ACCEPT),
        Workload("8 MiB multi-frame", study.instance_paths("8m"), INSTANCE_ACCEPT),
    ]


def fetch_header(url: str, accept: str, header: str) -> str:
    request = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()
        return str(response.headers.get(header, ""))


def warm(base_url: str, load: Workload, header: str) -> None:
    """Fetch every path until ``header`` says HIT (fills commit after the body ends)."""
    for path in load.paths:
        for _ in range(100):
            if fetch_header(base_url + path, load.accept, header) == "HIT":
                break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"{base_url}{path} never became a cache hit ({header})")


def summarise(results: list[wrk.Result]) -> Summary:
    return Summary(
        rps=statistics.median(r.rps for r in results),
        mib_s=statistics.median(r.mib_s for r in results),
        p50_ms=statistics.median(r.p50_ms for r in results),
        p99_ms=statistics.median(r.p99_ms for r in results),
        rounds=len(results),
        errors=sum(r.errors for r in results),
    )


def alternate(
    targets: dict[str, str],
    load: Workload,
    *,
    rounds: int,
    seconds: float,
    connections: int,
    progress: Callable[[str], None] = print,
) -> dict[str, Summary]:
    """wrk against each target in turn, ``rounds`` times; medians per target."""
    results: dict[str, list[wrk.Result]] = {name: [] for name in targets}
    for number in range(rounds):
        for name, base_url in targets.items():
            result = wrk.run(
                base_url, load.paths, load.accept, seconds=seconds, connections=connections
            )
            results[name].append(result)
            progress(
                f"  round {number + 1}/{rounds} {load.name:24} {name:18} "
                f"{result.rps:9.0f} req/s  p50 {result.p50_ms:7.2f} ms  "
                f"p99 {result.p99_ms:7.2f} ms  errors {result.errors}"
            )
    return {name: summarise(found) for name, found in results.items()}
