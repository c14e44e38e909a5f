"""Two checkouts of the proxy side by side: what a change saved, in CPU per request.

``python -m bench.ab OLD NEW [--workload 512k|64k|8m|metadata] [--no-cache] [--rounds 3]``
starts one Orthanc with the hit study and one proxy from each checkout (``OLD`` and
``NEW`` are directories holding ``proxy/``, e.g. ``git worktree add /tmp/old HEAD~1``),
warms both, and measures them in alternating wrk rounds as :mod:`bench.cpu` does: req/s
and CPU per request, user and system apart.  Both run on the same Python and packages
(this one's), so what differs is the code.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench import cpu, data, hits
from bench.profile import WORKLOADS
from bench.servers import Proxy
from harness.orthanc import Orthanc


def run(trees: dict[str, Path], workload: str, rounds: int, *, passthrough: bool) -> str:
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as scratch:
        orthanc = Orthanc(Path(scratch) / "orthanc").start()
        proxies: dict[str, Proxy] = {}
        try:
            load = hits.workloads(data.hit_study(orthanc.upload))[WORKLOADS[workload]]
            extra = ["--no-cache"] if passthrough else []
            for name, tree in trees.items():
                proxies[name] = Proxy(orthanc.dicomweb, *extra, tree=tree)
                if not passthrough:
                    hits.warm(proxies[name].url, load, "X-Cache")
            targets = {name: (proxy.url, proxy.pids) for name, proxy in proxies.items()}
            origin = [orthanc.process.pid] if orthanc.process else []
            mode = "pass-through" if passthrough else "cache hits"
            header = f"## A/B: {mode}, {load.name}, 16 connections, {rounds} rounds"
            return "\n".join([header, "", *cpu.measure(targets, lambda: origin, load, rounds)])
        finally:
            for proxy in proxies.values():
                proxy.stop()
            orthanc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__)
    parser.add_argument("old", type=Path, help="checkout of the build before the change")
    parser.add_argument("new", type=Path, help="checkout of the build with the change")
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="512k")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-cache", action="store_true", help="pass-through instead of hits")
    args = parser.parse_args()
    trees = {f"old ({args.old})": args.old.resolve(), f"new ({args.new})": args.new.resolve()}
    print(run(trees, args.workload, args.rounds, passthrough=args.no_cache))


if __name__ == "__main__":
    main()
