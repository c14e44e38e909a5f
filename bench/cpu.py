"""CPU time each server spends per request under the same wrk load, read from ``/proc``.

``python -m bench.cpu [--workload 512k|64k|8m|metadata] [--no-cache] [--rounds 4]
[--floor]``: starts Orthanc with the hit study, nginx ``proxy_cache`` and the proxy (1
worker each), warms both caches (with ``--no-cache``: nginx's uncached location and
``proxy --no-cache``, beside Orthanc direct), with ``--floor`` also the least a Python
server can do of the same (:mod:`bench.floors`), then runs wrk (16 connections, 5 s) against each in
alternating rounds.  Before and after each run it reads the user and system time of the
server's processes (shown apart: the kernel's share and the server's own) and of
Orthanc's; it prints req/s and microseconds of CPU per
request, medians of the rounds.  Throughput says who won on this machine; CPU per request
says why, and what a change saved, with less noise than req/s on a shared machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from bench import data, floors, hits, servers, wrk
from bench.hits import Pids, cpu_seconds, cpu_split
from bench.nginx import Nginx
from bench.profile import WORKLOADS
from bench.servers import Process, Proxy
from harness.net import free_port
from harness.orthanc import Orthanc

SECONDS = 5


def measure(
    targets: dict[str, tuple[str, Pids]], origin: Pids, load: hits.Workload, rounds: int
) -> list[str]:
    """Alternating wrk rounds; a table row per target (medians)."""
    rows: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in targets}
    for _ in range(rounds):
        for name, (url, pids) in targets.items():
            (user, system), upstream = cpu_split(pids()), cpu_seconds(origin())
            result = wrk.run(url, load.paths, load.headers, seconds=SECONDS, connections=16)
            served = max(result.rps * SECONDS, 1.0) / 1e6  # millions of requests
            user_after, system_after = cpu_split(pids())
            user, system = (user_after - user) / served, (system_after - system) / served
            upstream = (cpu_seconds(origin()) - upstream) / served
            rows[name].append((result.rps, user, system, upstream))
    lines = [
        "| target | req/s | CPU µs per request (user + system) | Orthanc's CPU µs per request |"
    ]
    lines.append("|---|---|---|---|")
    for name, found in rows.items():
        rps, user, system, upstream = (
            statistics.median(column) for column in zip(*found, strict=True)
        )
        cpu = f"{user + system:.0f} ({user:.0f} + {system:.0f})"
        lines.append(f"| {name} | {rps:.0f} | {cpu} | {upstream:.0f} |")
    return lines


def run(workload: str, rounds: int, *, passthrough: bool, floor: bool = False) -> str:
    with tempfile.TemporaryDirectory(prefix="bench-cpu-") as scratch:
        orthanc = Orthanc(Path(scratch) / "orthanc").start()
        started: list[Nginx | Process] = []
        try:
            load = hits.workloads(data.hit_study(orthanc.upload))[WORKLOADS[workload]]
            nginx = Nginx(port=free_port(), origin_port=orthanc.port).start()
            started.append(nginx)
            proxy = Proxy(orthanc.dicomweb, *(["--no-cache"] if passthrough else []))
            started.append(proxy)
            origin = [orthanc.process.pid] if orthanc.process else []
            targets = _targets(orthanc, nginx, proxy, load, passthrough)
            if floor:
                name, server = _floor(orthanc, proxy, load, Path(scratch), passthrough)
                started.append(server)
                targets[name] = (server.url, lambda: [server.pid])
            mode = "pass-through" if passthrough else "cache hits"
            header = f"## CPU per request: {mode}, {load.name}, 16 connections, {rounds} rounds"
            return "\n".join([header, "", *measure(targets, lambda: origin, load, rounds)])
        finally:
            for server in reversed(started):
                server.stop()
            orthanc.stop()


def _floor(
    orthanc: Orthanc, proxy: Proxy, load: hits.Workload, scratch: Path, passthrough: bool
) -> tuple[str, Process]:
    if passthrough:
        return "floor: bare aiohttp relay", servers.relay_floor(orthanc.url)
    body, head = floors.hit_files(proxy.url + load.paths[0], load.headers, scratch)
    return "floor: bare asyncio sendfile", servers.hit_floor(body, head)


def _targets(
    orthanc: Orthanc, nginx: Nginx, proxy: Proxy, load: hits.Workload, passthrough: bool
) -> dict[str, tuple[str, Pids]]:
    if passthrough:
        return {
            "proxy --no-cache": (proxy.url, proxy.pids),
            "nginx, no cache": (nginx.url + "/nocache", nginx.worker_pids),
            "orthanc direct": (orthanc.url, lambda: []),
        }
    hits.warm(proxy.url, load, "X-Cache")
    hits.warm(nginx.url, load, "X-Cache-Status")
    return {
        "proxy": (proxy.url, proxy.pids),
        "nginx proxy_cache": (nginx.url, nginx.worker_pids),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu", description=__doc__)
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="512k")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--no-cache", action="store_true", help="pass-through instead of hits")
    parser.add_argument("--floor", action="store_true", help="add bench.floors' server")
    args = parser.parse_args()
    print(run(args.workload, args.rounds, passthrough=args.no_cache, floor=args.floor))


if __name__ == "__main__":
    main()
