"""``python -m bench.fleet [--quick] [--fleet-only | --sim-only]``: issue #17's figures.

The fleet on loopback (``run.py``: HAProxy, 3 replicas, Orthanc behind a counting relay;
three runs with study hashing, the same with round robin), then the simulation
(``sim.py``).  Writes ``OUT/fleet.md`` and ``OUT/fleet.json``, the chart to ``--chart``,
and prints the report.  Exit status 1 when a verdict of the fleet runs fails.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

from bench.fleet import report, run, sim

QUICK_WORKLOAD = sim.Workload(studies=2_000, opens=20_000)


def _stop(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so every started server is stopped on the way out."""
    raise KeyboardInterrupt


def main() -> int:
    signal.signal(signal.SIGTERM, _stop)
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the short form (about a minute)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--fleet-only", action="store_true", help="skip the simulation")
    what.add_argument("--sim-only", action="store_true", help="skip the fleet on loopback")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--chart", type=Path, default=Path("docs/how-to/scale-out.png"))
    args = parser.parse_args()

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    fleet: dict[str, Any] | None = None
    simulation: dict[str, Any] | None = None
    if not args.sim_only:
        fleet = run.run(run.QUICK if args.quick else run.Plan(), log=log)
    if not args.fleet_only:
        simulation = sim.simulate(QUICK_WORKLOAD if args.quick else sim.Workload(), log=log)
    command = " ".join(["python -m bench.fleet", *sys.argv[1:]])
    text = report.markdown(fleet, simulation, command)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fleet.md").write_text(text)
    (args.out / "fleet.json").write_text(
        json.dumps({"fleet": fleet, "simulation": simulation}, indent=1, default=str)
    )
    if simulation is not None:
        args.chart.parent.mkdir(parents=True, exist_ok=True)
        report.chart(simulation, args.chart, fleet)
    print(text)
    log(f"written: {args.out / 'fleet.md'}, {args.out / 'fleet.json'}, {args.chart}")
    verdicts = (fleet or {}).get("verdicts", {})
    return 0 if all(verdicts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
