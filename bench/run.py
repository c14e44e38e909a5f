"""The benchmark run: set everything up on this machine, measure sections 1-6, tear down.

Each ``section_*`` starts the processes it compares, measures them in alternating
rounds and stops them; results are plain dicts that :mod:`bench.report` renders.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import clients, data, floors, hits, paired, rss, servers, stow, viewer
from bench.burst import burst, percentile
from bench.nginx import Nginx
from bench.servers import Proxy
from harness.net import free_port
from harness.orthanc import Orthanc

Log = Callable[[str], None]

# The least a Python server does of the same (bench.floors), beside the proxy and nginx.
FLOOR = floors.NAME


@dataclass(frozen=True)
class Plan:
    quick: bool = False
    rounds: int = 3
    seconds: float = 5.0
    connections: int = 16
    large: int = 24
    small: int = 16
    burst_clients: int = 50
    wan_instances: int = 200
    wan_rows: int = 512
    wan_rounds: int = 2
    metadata_rounds: int = 5  # half a second each: more rounds cost little
    rss_gib: float = 2.0
    stow_bytes: int = 1024**3
    stow_rounds: int = 2
    pairs: int = 300


QUICK = Plan(
    quick=True,
    rounds=1,
    seconds=1.0,
    large=4,
    small=4,
    wan_instances=12,
    wan_rows=128,
    wan_rounds=1,
    metadata_rounds=1,
    rss_gib=0.05,
    stow_bytes=8 * 1024**2,
    stow_rounds=1,
    pairs=20,
)


def start_nginx(origin_port: int, workers: int = 1) -> Nginx:
    nginx = Nginx(port=free_port(), origin_port=origin_port, workers=workers).start()
    servers.wait_port(nginx.port, process=nginx.process)
    return nginx


def body_size(url: str, accept: str) -> int:
    request = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=60) as response:
        return len(response.read())


# -- sections 1 and 2 -------------------------------------------------------------------


def _run_hits(
    plan: Plan, targets: dict[str, str], loads: list[hits.Workload], log: Log, extra=None
):  # type: ignore[no-untyped-def]
    """``extra``: more targets for some workloads, by workload name."""
    return {
        load.name: hits.alternate(
            {**targets, **(extra or {}).get(load.name, {})},
            load,
            rounds=plan.rounds,
            seconds=plan.seconds,
            connections=plan.connections,
            progress=log,
        )
        for load in loads
    }


def section_hits(plan: Plan, orthanc: Orthanc, study: data.StudySet, log: Log) -> dict[str, Any]:
    loads = hits.workloads(study)
    sizes = {load.name: body_size(orthanc.url + load.paths[0], load.accept) for load in loads}
    with contextlib.ExitStack() as started:
        proxy = Proxy(orthanc.dicomweb)
        started.callback(proxy.stop)
        nginx = start_nginx(orthanc.port)
        started.callback(nginx.stop)
        codings = {load.name: warm_both(proxy, nginx, load, log) for load in loads}
        targets = {
            "proxy": hits.Target(proxy.url, proxy.pids),
            "nginx": hits.Target(nginx.url, nginx.pids),
            "orthanc": hits.Target(orthanc.url, orthanc_pids(orthanc)),
        }
        large = next(load for load in loads if load.name.startswith("512"))
        floor = _hit_floor(proxy, large, started)
        results = _run_hits(plan, targets, loads, log, {large.name: {FLOOR: floor}})
    return {
        "sizes": sizes,
        "codings": codings,
        "headers": {load.name: load.headers for load in loads},
        "results": results,
        "workers2": section_workers(plan, orthanc, loads, log),
    }


def _hit_floor(proxy: Proxy, load: hits.Workload, started: contextlib.ExitStack) -> hits.Target:
    """bench.floors' hit server, answering the warm proxy's answer for ``load``."""
    scratch = started.enter_context(tempfile.TemporaryDirectory(prefix="bench-floor-"))
    files = floors.hit_files(proxy.url + load.paths[0], load.headers, Path(scratch))
    floor = servers.hit_floor(*files)
    started.callback(floor.stop)
    return hits.Target(floor.url, lambda: [floor.pid])


def warm_both(proxy: Proxy, nginx: Nginx, load: hits.Workload, log: Log) -> str:
    """Both caches answer HIT for exactly the workload's headers, in the same coding."""
    ours = hits.warm(proxy.url, load, "X-Cache")
    theirs = hits.warm(nginx.url, load, "X-Cache-Status")
    if ours != theirs:
        raise RuntimeError(f"{load.name}: the proxy's hits are {ours}, nginx's {theirs}")
    log(f"warm: {load.name}: HIT from both for {load.headers} ({ours})")
    return ours


def orthanc_pids(orthanc: Orthanc) -> hits.Pids:
    return lambda: [orthanc.process.pid] if orthanc.process else []


def _worker_count(proxy: Proxy) -> int:
    for _ in range(40):
        if (count := proxy.processes()) > 1:
            return count
        time.sleep(0.1)
    return 1


def section_workers(
    plan: Plan, orthanc: Orthanc, loads: list[hits.Workload], log: Log
) -> dict[str, Any] | None:
    """2 workers vs 2 nginx workers, when this build's ``--workers`` forks."""
    proxy = Proxy(orthanc.dicomweb, "--workers", "2")
    try:
        if _worker_count(proxy) < 2:
            log("--workers 2 starts one process in this build: 2 vs 2 is n/a")
            return None
        nginx = start_nginx(orthanc.port, workers=2)
        try:
            chosen = [load for load in loads if load.name.startswith(("512", "study"))]
            for load in chosen:
                warm_both(proxy, nginx, load, log)
            targets = {
                "proxy x2": hits.Target(proxy.url, proxy.pids),
                "nginx x2": hits.Target(nginx.url, nginx.pids),
            }
            return dict(_run_hits(plan, targets, chosen, log))
        finally:
            nginx.stop()
    finally:
        proxy.stop()


def section_pass(plan: Plan, orthanc: Orthanc, study: data.StudySet, log: Log) -> dict[str, Any]:
    """Pass-through: ``--no-cache`` against Orthanc direct, and nginx without its cache
    for reference (what any proxy in the path costs on this machine)."""
    loads = hits.workloads(study)
    instances = next(load for load in loads if load.name.startswith("512"))
    metadata = next(load for load in loads if load.name.startswith("study"))
    with contextlib.ExitStack() as started:
        proxy = Proxy(orthanc.dicomweb, "--no-cache")
        started.callback(proxy.stop)
        relay = servers.relay_floor(orthanc.url)
        started.callback(relay.stop)
        nginx = start_nginx(orthanc.port)
        started.callback(nginx.stop)
        targets = {
            "proxy --no-cache": hits.Target(proxy.url, proxy.pids),
            "nginx, no cache": hits.Target(nginx.url + "/nocache", nginx.pids),
            "orthanc": hits.Target(orthanc.url, orthanc_pids(orthanc)),
        }
        # The floor relays bulk only: it neither decodes nor gzips metadata as the proxy does.
        bulk = {**targets, FLOOR: hits.Target(relay.url, lambda: [relay.pid])}
        common = {"rounds": plan.rounds, "seconds": plan.seconds, "progress": log}
        throughput = hits.alternate(bulk, instances, connections=plan.connections, **common)  # type: ignore[arg-type]
        # curl's headers (no Accept-Encoding): Orthanc direct then compresses nothing
        # either, the figure that cannot flatter an intermediary asking for identity.
        plain = hits.Workload(instances.name, instances.paths, {"Accept": instances.accept})
        identity = hits.alternate(bulk, plain, connections=plan.connections, **common)  # type: ignore[arg-type]
        latency = hits.alternate(targets, metadata, connections=1, **common)  # type: ignore[arg-type]
        log(f"added latency: {plan.pairs} pairs of study-metadata requests per target")
        urls = {name: target.url for name, target in targets.items() if name != "orthanc"}
        added = paired.added_latency(
            orthanc.url, urls, metadata.paths[0], metadata.accept, pairs=plan.pairs
        )
    log(f"added latency in front of an instant origin: {plan.pairs} pairs per target")
    instant = added_instantly(orthanc, metadata, plan.pairs)
    return {
        "512 KiB instances": throughput,
        "512 KiB instances, no Accept-Encoding": identity,
        "study metadata, 1 connection": latency,
        "added": {name: asdict(value) for name, value in added.items()},
        "added_instant": {name: asdict(value) for name, value in instant.items()},
    }


def added_instantly(
    orthanc: Orthanc, metadata: hits.Workload, pairs: int
) -> dict[str, paired.Added]:
    """The same pairs in front of an origin that answers Orthanc's metadata at once
    (``bench.instant``): what the intermediary itself adds."""
    request = urllib.request.Request(
        orthanc.url + metadata.paths[0], headers={"Accept": metadata.accept}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        body, content_type = response.read(), response.headers["Content-Type"]
    with tempfile.NamedTemporaryFile(suffix=".json") as stored:
        stored.write(body)
        stored.flush()
        port = free_port()
        origin = servers.Process("bench.instant", [str(port), stored.name, content_type], port)
        proxy = nginx = None
        try:
            proxy = Proxy(origin.url + "/dicom-web", "--no-cache")
            nginx = start_nginx(origin.port)
            targets = {"proxy --no-cache": proxy.url, "nginx, no cache": nginx.url + "/nocache"}
            return paired.added_latency(
                origin.url, targets, metadata.paths[0], metadata.accept, pairs=pairs
            )
        finally:
            for server in (proxy, nginx, origin):
                if server is not None:
                    server.stop()


# -- section 3 --------------------------------------------------------------------------


def section_burst(plan: Plan, orthanc: Orthanc, study: data.StudySet, log: Log) -> dict[str, Any]:
    """``burst_clients`` simultaneous misses for one instance, a new instance per round."""
    relay = servers.counter(orthanc.url)
    proxy = Proxy(relay.url + "/dicom-web")
    try:
        nginx = start_nginx(relay.port)
    except BaseException:
        proxy.stop()
        relay.stop()
        raise
    targets = {"proxy": proxy.url, "nginx": nginx.url, "orthanc": relay.url}
    found: dict[str, dict[str, list[float]]] = {
        name: {"upstream": [], "p50": [], "p99": []} for name in targets
    }
    paths = study.instance_paths("512k")
    try:
        for number in range(plan.rounds):
            for name, base in targets.items():
                path = paths[(number * len(targets) + list(targets).index(name)) % len(paths)]
                servers.counts(relay, reset=True)
                latencies = asyncio.run(burst(base + path, plan.burst_clients))
                upstream = servers.counts(relay).get(f"GET {path}", 0)
                found[name]["upstream"].append(upstream)
                found[name]["p50"].append(percentile(latencies, 0.5))
                found[name]["p99"].append(percentile(latencies, 0.99))
                log(
                    f"  round {number + 1}/{plan.rounds} burst {name:10} upstream {upstream:3}"
                    f"  p99 {percentile(latencies, 0.99):8.1f} ms"
                )
    finally:
        proxy.stop()
        nginx.stop()
        relay.stop()
    return {
        name: {
            "clients": plan.burst_clients,
            "upstream": max(values["upstream"]),
            "p50_ms": statistics.median(values["p50"]),
            "p99_ms": statistics.median(values["p99"]),
        }
        for name, values in found.items()
    }


# -- section 4 --------------------------------------------------------------------------


def _load(base: str, study: str, concurrency: int = 6) -> float:
    seconds, _ = asyncio.run(viewer.load_study(base, study, concurrency=concurrency))
    return seconds


def _prefetch_works(upstream: str, study: data.StudySet) -> bool:
    """Does ``--prefetch series`` fetch more than was asked for, in this build?"""
    proxy = Proxy(upstream, "--prefetch", "series")
    try:
        body_size(proxy.url + study.instance_paths("ct")[0], data.INSTANCE_ACCEPT)
        for _ in range(50):
            if int(str(proxy.admin()["entries"])) > 3:
                return True
            time.sleep(0.1)
        return False
    finally:
        proxy.stop()


def section_wan(plan: Plan, orthanc: Orthanc, study: data.StudySet, log: Log) -> dict[str, Any]:
    link = servers.wan(orthanc.port)
    upstream = link.url + "/dicom-web"
    proxy = Proxy(upstream)
    times: dict[str, list[float]] = {"direct": [], "cold": [], "warm": []}
    try:
        for number in range(plan.wan_rounds):
            times["direct"].append(_load(upstream, study.uid))
            proxy.admin("DELETE")
            times["cold"].append(_load(proxy.url + "/dicom-web", study.uid))
            times["warm"].append(_load(proxy.url + "/dicom-web", study.uid))
            log(
                f"  round {number + 1}/{plan.wan_rounds} WAN load: direct {times['direct'][-1]:.2f}"
                f" s, cold {times['cold'][-1]:.2f} s, warm {times['warm'][-1]:.2f} s"
            )
        metadata = {LINKS[0]: _section_metadata(plan, upstream, proxy, study, log)}
        metadata[LINKS[1]] = _metadata_slow_start(plan, orthanc, study, log)
        prefetch = _section_prefetch(plan, upstream, study, log)
    finally:
        proxy.stop()
        link.stop()
    result: dict[str, Any] = {name: statistics.median(found) for name, found in times.items()}
    return {**result, **prefetch, "metadata": metadata}


# Study metadata cold over the WAN, for a client that asks for no coding (curl) and for
# one that asks gzip itself (Chromium): the upstream's gzip is the proxy's to gain only
# for the first (SPEC section 8).
PLAIN_CLIENT = "no coding asked (curl)"
WAN_METADATA = {
    PLAIN_CLIENT: {"Accept": data.METADATA_ACCEPT},
    "gzip asked (Chromium)": clients.OHIF_METADATA,
}
# The links the study metadata rows are measured on; the WAN loads above use the first.
LINKS = ("delay + rate", "delay + rate + TCP slow start")


def _metadata_slow_start(
    plan: Plan, orthanc: Orthanc, study: data.StudySet, log: Log
) -> dict[str, dict[str, float]]:
    """The same rows over a link that also keeps each connection's congestion window
    (``bench.wan --slow-start``): a large answer then costs round trips, as on a WAN."""
    with contextlib.ExitStack() as started:
        link = servers.wan(orthanc.port, slow_start=True)
        started.callback(link.stop)
        proxy = Proxy(link.url + "/dicom-web")
        started.callback(proxy.stop)
        return _section_metadata(plan, link.url + "/dicom-web", proxy, study, log)


def _section_metadata(
    plan: Plan, upstream: str, proxy: Proxy, study: data.StudySet, log: Log
) -> dict[str, dict[str, float]]:
    """Study metadata, direct over the WAN vs through the proxy with its cache emptied."""
    found: dict[str, dict[str, list[float]]] = {
        name: {"direct": [], "cold": [], "direct_bytes": [], "cold_bytes": []}
        for name in WAN_METADATA
    }
    for number in range(plan.metadata_rounds):
        for name, headers in WAN_METADATA.items():
            seconds, size = asyncio.run(viewer.time_metadata(upstream, study.uid, headers))
            found[name]["direct"].append(seconds)
            found[name]["direct_bytes"].append(size)
            proxy.admin("DELETE")
            base = proxy.url + "/dicom-web"
            seconds, size = asyncio.run(viewer.time_metadata(base, study.uid, headers))
            found[name]["cold"].append(seconds)
            found[name]["cold_bytes"].append(size)
            log(
                f"  round {number + 1}/{plan.metadata_rounds} study metadata, {name}: direct "
                f"{found[name]['direct'][-1]:.3f} s, proxy cold {found[name]['cold'][-1]:.3f} s"
            )
    return {
        name: {key: statistics.median(values) for key, values in row.items()}
        for name, row in found.items()
    }


def _section_prefetch(plan: Plan, upstream: str, study: data.StudySet, log: Log) -> dict[str, Any]:
    """Slice by slice (one request at a time), cold, direct vs ``--prefetch series``."""
    if not _prefetch_works(upstream, study):
        log("--prefetch series fetches nothing extra in this build: n/a")
        return {"prefetch": None, "direct_slices": None}
    direct, prefetched = [], []
    for number in range(plan.wan_rounds):
        direct.append(_load(upstream, study.uid, concurrency=1))
        proxy = Proxy(upstream, "--prefetch", "series")
        try:
            prefetched.append(_load(proxy.url + "/dicom-web", study.uid, concurrency=1))
        finally:
            proxy.stop()
        log(
            f"  round {number + 1}/{plan.wan_rounds} slice by slice: direct {direct[-1]:.2f} s,"
            f" --prefetch series cold {prefetched[-1]:.2f} s"
        )
    return {"prefetch": statistics.median(prefetched), "direct_slices": statistics.median(direct)}


# -- section 6 --------------------------------------------------------------------------


def _orthanc_call(orthanc: Orthanc, method: str, path: str, body: bytes | None = None) -> Any:
    request = urllib.request.Request(orthanc.url + path, data=body, method=method)
    with urllib.request.urlopen(request, timeout=300) as response:
        raw = response.read()
    return json.loads(raw) if raw else None


def stored_instances(orthanc: Orthanc, study_uid: str) -> int:
    found = _orthanc_call(orthanc, "POST", "/tools/lookup", study_uid.encode())
    ids = [item["ID"] for item in found if item["Type"] == "Study"]
    if not ids:
        return 0
    return len(_orthanc_call(orthanc, "GET", f"/studies/{ids[0]}/instances"))


def drop_study(orthanc: Orthanc, study_uid: str) -> None:
    found = _orthanc_call(orthanc, "POST", "/tools/lookup", study_uid.encode())
    for item in found:
        if item["Type"] == "Study":
            _orthanc_call(orthanc, "DELETE", f"/studies/{item['ID']}")


def _batching_works(orthanc: Orthanc, tmp: Path) -> bool:
    """Does a POST /studies through the proxy leave as several upstream requests?"""
    relay = servers.counter(orthanc.url)
    proxy = Proxy(relay.url + "/dicom-web", "--stow-max-instances", "1")
    try:
        study_uid, _ = data.write_stow_body(tmp / "probe.bin", 3 * 512 * 1024)
        asyncio.run(stow.post(proxy.url + "/dicom-web", tmp / "probe.bin"))
        drop_study(orthanc, study_uid)
        return servers.counts(relay).get("POST /dicom-web/studies", 0) > 1
    finally:
        proxy.stop()
        relay.stop()


def section_stow(plan: Plan, orthanc: Orthanc, tmp: Path, log: Log) -> dict[str, Any]:
    batching = _batching_works(orthanc, tmp)
    log(f"STOW batching through the proxy: {'yes' if batching else 'no (plain pass-through)'}")
    body = tmp / "stow.bin"
    study_uid, count = data.write_stow_body(body, plan.stow_bytes)
    proxy = Proxy(orthanc.dicomweb)
    targets = {"proxy": proxy.url + "/dicom-web", "orthanc": orthanc.dicomweb}
    found: dict[str, list[float]] = {name: [] for name in targets}
    complete = dict.fromkeys(targets, True)
    try:
        for number in range(plan.stow_rounds):
            for name, url in targets.items():
                drop_study(orthanc, study_uid)
                seconds, status = asyncio.run(stow.post(url, body))
                stored = stored_instances(orthanc, study_uid)
                complete[name] &= stored == count
                found[name].append(seconds)
                log(
                    f"  round {number + 1}/{plan.stow_rounds} STOW {name:8} {seconds:6.2f} s"
                    f"  status {status}  stored {stored}/{count}"
                )
        drop_study(orthanc, study_uid)
    finally:
        proxy.stop()
    size = body.stat().st_size
    return {
        "bytes": size,
        "instances": count,
        "batching": batching,
        "seconds": {name: statistics.median(values) for name, values in found.items()},
        "mib_s": {name: size / 1024**2 / statistics.median(v) for name, v in found.items()},
        "complete": complete,
    }


# -- the whole run ------------------------------------------------------------------------


def run(plan: Plan, log: Log = print) -> dict[str, Any]:
    results: dict[str, Any] = {"plan": asdict(plan), "started": time.strftime("%Y-%m-%d %H:%M")}
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        tmp = Path(scratch)
        orthanc = Orthanc(tmp / "orthanc").start()
        try:
            log("loading synthetic CT studies into Orthanc")
            study = data.hit_study(orthanc.upload, large=plan.large, small=plan.small)
            wan_study = data.wan_study(
                orthanc.upload,
                count=plan.wan_instances,
                rows=plan.wan_rows,
                columns=plan.wan_rows,
            )
            log("1. cache hits: proxy vs nginx proxy_cache vs Orthanc direct")
            results["hits"] = section_hits(plan, orthanc, study, log)
            log("2. pass-through: proxy --no-cache vs Orthanc direct")
            results["pass"] = section_pass(plan, orthanc, study, log)
            log(f"3. {plan.burst_clients} concurrent misses for one instance")
            results["burst"] = section_burst(plan, orthanc, study, log)
            log("4. emulated WAN (50 ms RTT, 100 Mbit/s) between client/proxy and Orthanc")
            results["wan"] = section_wan(plan, orthanc, wan_study, log)
            results["wan"]["instances"] = plan.wan_instances
            results["wan"]["rows"] = plan.wan_rows
            log("6. one large STOW through the proxy vs straight to Orthanc")
            results["stow"] = section_stow(plan, orthanc, tmp, log)
        finally:
            orthanc.stop()
    log(f"5. peak RSS while {plan.rss_gib} GiB streams through")
    results["rss"] = asyncio.run(rss.measure(plan.rss_gib))
    results["minutes"] = round((time.monotonic() - began) / 60, 1)
    return results
