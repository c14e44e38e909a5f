"""The fleet measurement (issue #17, SPEC section 8 last line): three runs of one trace.

One Orthanc (Debian's shipped configuration) behind the byte-counting relay, 3 proxy
replicas, HAProxy running ``deploy/balancers/haproxy.cfg``; the trace of viewers opening
studies is replayed three times:

(a) all replicas up, caches cold: each study should cross the upstream once fleet-wide;
(b) the same trace, one replica (``proxy-1``, chosen beforehand, not by its share) sent
    SIGTERM when the trace is half done: clients should see no error (HAProxy retries and
    redispatches), and at most 1/3 + 5 % of the studies should be fetched again;
(c) the same trace with that replica back (same port, same data directory, as a
    StatefulSet pod keeps its name and its claim): its share should return to it.

Then the same three runs through the same file with round robin instead of the study
hash, on fresh caches, as the comparison.  Every answer's ``X-Served-By`` is checked
against the ring model of ``ring.py``; the archive fetches against ``sim.replay_fleet``.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.fleet import ring, sim
from bench.fleet.cluster import HAPROXY_CONFIG, Haproxy, Relay, Replica, round_robin
from bench.fleet.trace import Catalogue, opens
from bench.fleet.viewers import Open, replay
from harness.dicomgen import make_instance
from harness.net import free_port
from harness.orthanc import Orthanc

REPLICAS = 3
STOPPED = "proxy-1"
WEIGHT = 100  # the reference config's default-server weight
LIMIT = 1 / 3 + 0.05  # SPEC section 8: at most 1/3 + 5 % of the studies fetched again
Log = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    studies: int = 60
    series: int = 2
    instances: int = 10  # per series
    rows: int = 128
    columns: int = 128
    opens: int = 240
    exponent: float = 1.0
    viewers: int = 3
    seed: int = 3
    stop_at: float = 0.5  # of the trace, in run (b)
    check_inter: str = "500ms"
    modes: tuple[str, ...] = ("hash", "roundrobin")
    roundrobin_runs: str = "abc"

    @property
    def catalogue(self) -> Catalogue:
        return Catalogue(self.seed, self.studies, self.series, self.instances)

    @property
    def trace(self) -> list[str]:
        uids = self.catalogue.uids
        return [
            uids[r] for r in opens(self.studies, self.opens, exponent=self.exponent, seed=self.seed)
        ]

    @property
    def stop_index(self) -> int:
        return int(self.opens * self.stop_at)


# The short form in `make test` (tests/test_fleet.py): the same three runs, smaller.
QUICK = Plan(
    studies=24,
    series=1,
    instances=8,
    rows=64,
    columns=64,
    opens=72,
    check_inter="250ms",
    roundrobin_runs="a",
)


def load_archive(orthanc: Orthanc, plan: Plan) -> None:
    catalogue = plan.catalogue
    for rank in range(plan.studies):
        study = catalogue.study_uid(rank)
        for series in range(plan.series):
            series_uid = catalogue.series_uid(rank, series)
            for number in range(1, plan.instances + 1):
                data = make_instance(
                    study,
                    series_uid,
                    number,
                    rows=plan.rows,
                    columns=plan.columns,
                    sop_uid=catalogue.sop_uid(rank, series, number),
                    series_number=series + 1,
                )
                orthanc.upload(data)


@dataclass
class Fleet:
    """The replicas and the balancer of one mode (hash or round robin), caches fresh."""

    mode: str
    replicas: list[Replica]
    balancer: Haproxy
    workdir: Path

    @classmethod
    def start(cls, mode: str, relay: Relay, workdir: Path, plan: Plan) -> Fleet:
        port = free_port()
        public = f"http://127.0.0.1:{port}/dicom-web"
        upstream = relay.url + "/dicom-web"
        replicas = [
            Replica(f"proxy-{i}", upstream, public, workdir / mode / f"proxy-{i}")
            for i in range(REPLICAS)
        ]
        try:
            for replica in replicas:
                replica.launch()
            for replica in replicas:
                replica.wait()
            config = HAPROXY_CONFIG.read_text()
            if mode == "roundrobin":
                config = round_robin(config)
            balancer = Haproxy(config, replicas, port=port, check_inter=plan.check_inter)
            fleet = cls(mode, replicas, balancer.start(), workdir)
        except BaseException:
            for replica in replicas:  # none is left running when the fleet cannot start
                replica.stop()
            raise
        for replica in replicas:
            balancer.wait_state(replica.name, "UP")
        return fleet

    @property
    def base(self) -> str:
        return self.balancer.url + "/dicom-web"

    def replica(self, name: str) -> Replica:
        return next(r for r in self.replicas if r.name == name)

    def stop(self) -> None:
        self.balancer.stop()
        for replica in self.replicas:
            replica.stop()


@dataclass
class StopEvent:
    """When run (b) stopped the replica, and when HAProxy saw it down."""

    index: int
    stopped_at: float = 0.0
    down_at: float = 0.0
    thread: threading.Thread | None = field(default=None, repr=False)


def run_trace(
    fleet: Fleet, relay: Relay, plan: Plan, *, stop: StopEvent | None = None
) -> dict[str, Any]:
    relay.counts(reset=True)
    trace = plan.trace

    def on_open(index: int) -> None:
        if stop is not None and index == stop.index and stop.thread is None:
            stop.thread = threading.Thread(target=_stop_replica, args=(fleet, stop))
            stop.thread.start()

    began = time.monotonic()
    records = asyncio.run(replay(fleet.base, trace, viewers=plan.viewers, on_open=on_open))
    seconds = time.monotonic() - began
    if stop is not None and stop.thread is not None:
        stop.thread.join()
    return summarize(records, relay.counts(), seconds)


def _stop_replica(fleet: Fleet, stop: StopEvent) -> None:
    stop.stopped_at = time.monotonic()
    fleet.replica(STOPPED).stop()  # SIGTERM: in-flight requests finish, new ones refused
    fleet.balancer.wait_state(STOPPED, "DOWN")
    stop.down_at = time.monotonic()


STUDY_PREFIX = "GET /dicom-web/studies/"
RUN_NAMES = ("a", "b", "c")


def summarize(records: list[Open], counts: dict[str, list[int]], seconds: float) -> dict[str, Any]:
    answers = [answer for record in records for answer in record.answers]
    ok = [answer for answer in answers if answer.status == 200]
    resources = {answer.path for answer in ok}
    per_study: Counter[str] = Counter()
    bytes_per: Counter[str] = Counter()
    other_requests = 0
    for key, (requests, size) in counts.items():
        if key.startswith(STUDY_PREFIX):
            uid = key[len(STUDY_PREFIX) :].split("/", 1)[0]
            per_study[uid] += requests
            bytes_per[uid] += size
        else:
            other_requests += requests  # readiness probes, revalidation queries
    opened = {record.study for record in records}
    loads = sorted(record.seconds for record in records)
    study_requests = sum(per_study.values())
    return {
        "opens": len(records),
        "requests": len(answers),
        "errors": len(answers) - len(ok),
        "error_paths": [a.path for a in answers if a.status != 200][:10],
        "hit_ratio": sum(1 for a in ok if a.cache == "HIT") / len(ok) if ok else 0.0,
        "studies_opened": len(opened),
        "studies_fetched": sorted(per_study),
        "upstream_requests": study_requests,
        "upstream_bytes": sum(bytes_per.values()),
        "upstream_other_requests": other_requests,
        "requests_per_study": study_requests / len(opened),
        "bytes_per_study": sum(bytes_per.values()) / len(opened),
        "copies": study_requests / len(resources) if resources else 0.0,
        "p50_s": _percentile(loads, 0.50),
        "p99_s": _percentile(loads, 0.99),
        "seconds": seconds,
        "served_by": _served_by(records),
    }


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(q * len(values)))]


def _served_by(records: list[Open]) -> list[tuple[float, float, str, str]]:
    """(sent, answered, study, replica) of each answer that names its replica."""
    return [
        (answer.sent, answer.answered, record.study, answer.served_by)
        for record in records
        for answer in record.answers
        if answer.served_by
    ]


def routing_agreement(
    served: list[tuple[float, float, str, str]], stop: StopEvent | None
) -> dict[str, int]:
    """Answers whose replica is the one ``ring.py`` predicts.

    Run (b): answers that came back before the stop expect the full ring, requests sent
    once HAProxy had marked the replica down expect the ring without it; the requests in
    between (in flight on the stopped replica as it drained, or retried while HAProxy
    still counted it up, walking the ring on from it) are counted apart.
    """
    full = ring.Ring(ring.fleet(REPLICAS, WEIGHT))
    without = full.without(STOPPED)
    checked = mismatched = window = 0
    for sent, answered, study, replica in served:
        if stop is None or answered < stop.stopped_at:
            expected = full.server_for(ring.study_path(study))
        elif sent >= stop.down_at:
            expected = without.server_for(ring.study_path(study))
        else:
            window += 1
            continue
        checked += 1
        mismatched += expected != replica
    return {"checked": checked, "mismatched": mismatched, "in_window": window}


def run_mode(mode: str, relay: Relay, workdir: Path, plan: Plan, log: Log) -> dict[str, Any]:
    runs = "abc" if mode == "hash" else plan.roundrobin_runs
    fleet = Fleet.start(mode, relay, workdir, plan)
    results: dict[str, Any] = {}
    stops: dict[str, StopEvent | None] = {"a": None, "c": None}
    try:
        log(f"{mode}: run (a), all {REPLICAS} replicas up, caches cold")
        results["a"] = run_trace(fleet, relay, plan)
        if "b" in runs:
            log(f"{mode}: run (b), {STOPPED} stopped at open {plan.stop_index}")
            stops["b"] = stop = StopEvent(plan.stop_index)
            results["b"] = run_trace(fleet, relay, plan, stop=stop)
            results["b"]["detected_down_s"] = stop.down_at - stop.stopped_at
        if "c" in runs:
            log(f"{mode}: run (c), {STOPPED} back with its data directory")
            fleet.replica(STOPPED).start()
            results["c_detected_up_s"] = fleet.balancer.wait_state(STOPPED, "UP")
            results["c"] = run_trace(fleet, relay, plan)
    finally:
        fleet.stop()
        shutil.rmtree(workdir / mode, ignore_errors=True)
    if mode == "hash":  # round robin names replicas no model predicts
        for name in runs:
            results[name]["routing"] = routing_agreement(results[name]["served_by"], stops[name])
    return results


def verdicts(hashing: dict[str, Any], plan: Plan) -> dict[str, bool]:
    """SPEC section 8, last line, and the issue's three runs."""
    a, b, c = hashing["a"], hashing["b"], hashing["c"]
    owners = sim.replay_fleet(plan.trace, STOPPED, plan.stop_index).owners
    share = {uid for uid, owner in owners.items() if owner == STOPPED}
    back = [replica for *_, study, replica in c["served_by"] if study in share]
    once = a["copies"] == 1.0 and len(a["studies_fetched"]) == a["studies_opened"]
    refetched = len(b["studies_fetched"]) / b["studies_opened"]
    return {
        "a: each study fetched once": once,
        "a: routing as the ring model says": a["routing"]["mismatched"] == 0,
        "b: no client error": b["errors"] == 0,
        "b: at most 1/3 + 5 % fetched again": refetched <= LIMIT,
        "c: its share back on it": bool(back) and all(r == STOPPED for r in back),
        "c: nothing fetched again": not c["studies_fetched"],
    }


def run(plan: Plan, log: Log = print) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="fleet-"))
    orthanc = Orthanc(workdir / "orthanc")
    relay: Relay | None = None
    try:
        orthanc.start()
        began = time.monotonic()
        load_archive(orthanc, plan)
        log(
            f"archive: {plan.studies} studies, {orthanc.instance_count()} instances "
            f"({time.monotonic() - began:.0f} s)"
        )
        relay = Relay(orthanc.url)
        results: dict[str, Any] = {"plan": plan.__dict__}
        for mode in plan.modes:
            results[mode] = run_mode(mode, relay, workdir, plan, log)
        prediction = sim.replay_fleet(plan.trace, STOPPED, plan.stop_index)
        results["prediction"] = {
            run: sorted(studies) for run, studies in prediction.fetched.items()
        }
        results["prediction_roundrobin_copies"] = sim.round_robin_copies(
            plan.trace, 1 + plan.series * plan.instances, REPLICAS
        )
        results["stopped_share"] = sum(1 for o in prediction.owners.values() if o == STOPPED) / len(
            prediction.owners
        )
        if "hash" in plan.modes:
            results["verdicts"] = verdicts(results["hash"], plan)
            served = {study: replica for *_, study, replica in results["hash"]["a"]["served_by"]}
            results["served_share"] = sum(1 for r in served.values() if r == STOPPED) / len(served)
        for mode in plan.modes:
            for name in RUN_NAMES:
                results[mode].get(name, {}).pop("served_by", None)
        return results
    finally:
        if relay is not None:
            relay.stop()
        orthanc.stop()
        shutil.rmtree(workdir, ignore_errors=True)
