"""``python -m bench [--quick] [--out DIR]``: the side-by-side benchmark of SPEC section 8.

Starts Orthanc (loaded with synthetic CT), the proxy, nginx ``proxy_cache``, a WAN
relay and a counting relay on loopback; measures; writes ``DIR/latest.md``,
``DIR/latest.json`` and ``DIR/throughput.png`` and prints the report.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
from pathlib import Path
from typing import Any

from bench import report
from bench.run import QUICK, Plan, run


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(type(value).__name__)


def _stop(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so every started server is stopped on the way out."""
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _stop)
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short smoke run (about 2 min)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    plan = QUICK if args.quick else Plan()
    results = run(plan, log=lambda line: print(line, file=sys.stderr, flush=True))
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python -m bench" + (" --quick" if args.quick else "")
    text = report.markdown(results, command)
    (args.out / "latest.md").write_text(text)
    (args.out / "latest.json").write_text(json.dumps(results, default=_plain, indent=1))
    report.chart(results, args.out / "throughput.png")
    print(text)
    print(f"written: {args.out / 'latest.md'}, {args.out / 'throughput.png'}", file=sys.stderr)


if __name__ == "__main__":
    main()
