"""The proxy on uvloop against the default asyncio loop, in one run (SPEC section 8 work).

``python -m bench.loops [--rounds 3] [--seconds 5]``: one Orthanc with the hit study,
two proxies (asyncio, uvloop) for cache hits and two with ``--no-cache`` for
pass-through, measured in alternating rounds with wrk; prints req/s per workload.
uvloop is kept only if it wins; the README records the result.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench import data, hits
from bench.servers import Proxy
from harness.orthanc import Orthanc


def compare(orthanc: Orthanc, loads: list[hits.Workload], args: argparse.Namespace) -> None:
    for mode, extra in (("hit", ()), ("pass-through", ("--no-cache",))):
        default = Proxy(orthanc.dicomweb, *extra)
        try:
            uv = Proxy(orthanc.dicomweb, *extra, module="bench.uvloop_proxy")
        except BaseException:
            default.stop()
            raise
        try:
            for load in loads:
                if not extra:
                    hits.warm(default.url, load, "X-Cache")
                    hits.warm(uv.url, load, "X-Cache")
                targets = {
                    "asyncio": hits.Target(default.url, default.pids),
                    "uvloop": hits.Target(uv.url, uv.pids),
                }
                results = hits.alternate(
                    targets, load, rounds=args.rounds, seconds=args.seconds, connections=16
                )
                ratio = results["uvloop"].rps / results["asyncio"].rps
                print(
                    f"{mode:12} {load.name:22} asyncio {results['asyncio'].rps:7.0f} req/s"
                    f"  uvloop {results['uvloop'].rps:7.0f} req/s  uvloop/asyncio {ratio:.2f}"
                )
        finally:
            default.stop()
            uv.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-loops-") as scratch:
        orthanc = Orthanc(Path(scratch) / "orthanc").start()
        try:
            study = data.hit_study(orthanc.upload, large=24, small=16)
            loads = [
                load
                for load in hits.workloads(study)
                if not load.name.startswith("8 MiB")  # a few req/s: too noisy in 5 s
            ]
            compare(orthanc, loads, args)
        finally:
            orthanc.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
