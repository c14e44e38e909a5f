"""The fleet at sizes this machine cannot hold: HAProxy's ring (``ring.py``) and one LRU
cache per replica, over a long synthetic trace.

Two questions, the two panels of the chart:
1. hit ratio vs number of replicas and per-replica cache size, study hashing against
   round robin (where every replica ends up caching the same popular studies);
2. the share of the studies fetched again when one of N replicas is lost, and when it
   comes back: consistent hashing keyed by a stable server id (this chart's StatefulSet)
   against map-based hashing and against a ring keyed by pod IP (a restarted pod gets new
   points, so its old share is lost and a new one must be fetched).

``replay_fleet`` runs the fleet test's own trace through the same model, so the two can
be compared where they overlap (``bench.fleet.run``).
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from bench.fleet import ring
from bench.fleet.trace import opens


@dataclass(frozen=True)
class Workload:
    """A catalogue of studies (sizes in MiB) and the opens of a long day."""

    studies: int = 20_000
    opens: int = 200_000
    exponent: float = 0.9
    median_mib: float = 120.0  # a CT study; log-normal spread below
    sigma: float = 0.8
    chunks: int = 8  # round robin spreads a study's requests over replicas chunk by chunk
    seed: int = 17

    def sizes(self) -> list[float]:
        rng = random.Random(self.seed)
        mu = math.log(self.median_mib)
        return [rng.lognormvariate(mu, self.sigma) for _ in range(self.studies)]

    def trace(self) -> list[int]:
        return opens(self.studies, self.opens, exponent=self.exponent, seed=self.seed + 1)

    def keys(self) -> list[int]:
        """Each study's ring hash, as HAProxy computes it from its path."""
        return [
            ring.key_hash(ring.uri_key(ring.study_path(f"1.2.826.0.1.{self.seed}.{i}"), 3))
            for i in range(self.studies)
        ]


class Lru:
    """A byte-bounded LRU cache of keys (the proxy evicts least recently used first)."""

    def __init__(self, capacity: float) -> None:
        self.capacity = capacity
        self.used = 0.0
        self.entries: OrderedDict[object, float] = OrderedDict()

    def get(self, key: object, size: float) -> bool:
        """True on a hit; a miss stores the entry, evicting the oldest beyond capacity."""
        if key in self.entries:
            self.entries.move_to_end(key)
            return True
        if size <= self.capacity:
            self.entries[key] = size
            self.used += size
            while self.used > self.capacity:
                _, evicted = self.entries.popitem(last=False)
                self.used -= evicted
        return False


@dataclass
class HitRatio:
    policy: str
    replicas: int
    cache_fraction: float  # per-replica cache / catalogue bytes
    byte_hit_ratio: float
    upstream_per_open_mib: float


def simulate_hit_ratio(
    workload: Workload,
    sizes: Sequence[float],
    trace: Sequence[int],
    keys: Sequence[int],
    replicas: int,
    cache_fraction: float,
    policy: str,
    weight: int = 100,
) -> HitRatio:
    capacity = cache_fraction * sum(sizes)
    caches = [Lru(capacity) for _ in range(replicas)]
    hit = total = 0.0
    if policy == "hash":
        table = ring.Ring(ring.fleet(replicas, weight))
        index = {server.name: i for i, server in enumerate(table.servers)}
        owner = [index[table.lookup(key)] for key in keys]
        for study in trace:
            total += sizes[study]
            if caches[owner[study]].get(study, sizes[study]):
                hit += sizes[study]
    else:
        # Many viewers' requests interleave at the balancer, so which replica round robin
        # hands a given request to is as good as random (a strict rotation over one
        # serial stream would send chunk j of every study to replica j mod N).
        rng = random.Random(workload.seed + replicas)
        for study in trace:
            chunk = sizes[study] / workload.chunks
            for part in range(workload.chunks):
                total += chunk
                if caches[rng.randrange(replicas)].get((study, part), chunk):
                    hit += chunk
    upstream = (total - hit) / len(trace)
    return HitRatio(policy, replicas, cache_fraction, hit / total, upstream)


@dataclass
class Loss:
    """Shares of the opened studies fetched from the archive again, one of N lost."""

    replicas: int
    consistent: float  # hash-type consistent, averaged over which replica is lost
    consistent_worst: float  # the same, losing the replica with the largest share
    map_based: float  # hash-type map-based: hash % servers up
    back_same_id: float  # on its return under its id, its cache kept (a StatefulSet pod)
    back_new_points: float  # on its return with new points (a ring keyed by pod IP)


def simulate_loss(
    keys: Sequence[int], trace: Iterable[int], replicas: int, weight: int = 100
) -> Loss:
    """Unbounded caches, every opened study cached on its owner; then one replica goes.

    A study is fetched again when its new owner is a replica that never held it.  When
    the lost replica comes back under the same id (a StatefulSet pod) it gets exactly
    its points back, and with its volume its cache: nothing is fetched.  Back with new
    points instead, it owns a new share of which it holds only the overlap with the old.
    """
    opened = sorted(set(trace))
    servers = ring.fleet(replicas, weight)
    table = ring.Ring(servers)
    owner = {s: table.lookup(keys[s]) for s in opened}
    moved, remapped, same_id, reborn_fetch = [], [], [], []
    for lost in servers:
        share = {s for s in opened if owner[s] == lost.name}
        moved.append(len(share))
        remapped.append(
            sum(1 for s in opened if ring.map_based(servers, keys[s], [lost.name]) != owner[s])
        )
        # Back under its id: a ring rebuilt from the same servers; what it owns and lacks.
        back = ring.Ring(list(servers))
        same_id.append(
            sum(1 for s in opened if back.lookup(keys[s]) == lost.name and s not in share)
        )
        reborn = ring.Server(lost.name, lost.id + replicas, weight)  # another id, new points
        again = ring.Ring([reborn if s is lost else s for s in servers])
        reborn_fetch.append(
            sum(1 for s in opened if again.lookup(keys[s]) == lost.name and s not in share)
        )
    count = len(opened) or 1
    return Loss(
        replicas,
        sum(moved) / replicas / count,
        max(moved) / count,
        sum(remapped) / replicas / count,
        sum(same_id) / replicas / count,
        sum(reborn_fetch) / replicas / count,
    )


def share_spread(replicas: int, weight: int) -> float:
    """Largest share × N: 1.0 is a perfectly even ring."""
    return max(ring.Ring(ring.fleet(replicas, weight)).shares().values()) * replicas


@dataclass
class FleetPrediction:
    """What the model says the fleet test's runs fetch from the archive."""

    owners: dict[str, str]  # study UID -> replica, all up
    fetched: dict[str, set[str]] = field(default_factory=dict)  # run -> studies fetched


def replay_fleet(
    uids: Sequence[str], stopped: str, stop_index: int, replicas: int = 3, weight: int = 100
) -> FleetPrediction:
    """The fleet test's trace (study UIDs in open order) through the ring, caches unbounded.

    (a) every study once, on its owner; (b) from ``stop_index`` on, the studies of the
    stopped replica go to their next owner, which fetches them once; (c) the replica is
    back under its id with its cache: nothing is fetched.
    """
    table = ring.Ring(ring.fleet(replicas, weight))
    after = table.without(stopped)
    owners = {uid: table.server_for(ring.study_path(uid)) for uid in uids}
    moved = {
        uid
        for uid in uids[stop_index:]
        if owners[uid] == stopped and after.server_for(ring.study_path(uid)) != stopped
    }
    return FleetPrediction(owners, {"a": set(uids), "b": moved, "c": set()})


def round_robin_copies(
    studies_in_order: Sequence[str], requests: int, replicas: int = 3, seed: int = 0
) -> float:
    """Round robin for opens of ``requests`` requests each: how many replicas end up
    fetching each resource, on average (hashing: 1).  Concurrent viewers interleave, so
    each request's replica is drawn at random (see ``simulate_hit_ratio``)."""
    rng = random.Random(seed)
    held = {
        (study, part, rng.randrange(replicas))
        for study in studies_in_order
        for part in range(requests)
    }
    resources = len(set(studies_in_order)) * requests
    return len(held) / resources if resources else 0.0


REPLICA_COUNTS = (1, 2, 3, 4, 6, 8, 12, 16)
CACHE_FRACTIONS = (0.02, 0.05, 0.10)
WEIGHTS = (1, 10, 100, 256)


def simulate(
    workload: Workload,
    *,
    replicas: Sequence[int] = REPLICA_COUNTS,
    fractions: Sequence[float] = CACHE_FRACTIONS,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The two panels' data: hit ratios on a grid, and losses for N >= 2."""
    sizes, trace, keys = workload.sizes(), workload.trace(), workload.keys()
    hits: list[HitRatio] = []
    for fraction in fractions:
        for count in replicas:
            for policy in ("hash", "roundrobin"):
                if policy == "roundrobin" and count == 1:
                    hits.append(replace(hits[-1], policy=policy))
                    continue
                hits.append(
                    simulate_hit_ratio(workload, sizes, trace, keys, count, fraction, policy)
                )
            log(f"simulation: cache {fraction:.0%} per replica, {count} replicas")
    losses = [simulate_loss(keys, trace, count) for count in replicas if count >= 2]
    spread = {w: {n: share_spread(n, w) for n in replicas if n >= 2} for w in WEIGHTS}
    return {
        "workload": asdict(workload),
        "catalogue_gib": sum(sizes) / 1024,
        "hits": [asdict(item) for item in hits],
        "losses": [asdict(item) for item in losses],
        "share_spread": spread,
    }
