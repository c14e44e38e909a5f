"""Where the proxy's cache-hit path spends its time, under wrk load (py-spy).

``python -m bench.profile [--seconds 20] [--workload 512k|64k|8m|metadata] [--no-cache]``:
starts Orthanc with the hit study and one proxy, warms it (or runs it with
``--no-cache`` to profile pass-through), runs wrk against it and samples
the proxy with ``py-spy record`` meanwhile.  Writes ``bench/results/profile-*.txt``
(collapsed stacks, also loadable in speedscope) and prints the top frames by self
time and by inclusive time, as a percentage of samples.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from bench import data, hits, wrk
from bench.servers import Proxy
from harness.orthanc import Orthanc

WORKLOADS = {"metadata": 0, "64k": 1, "512k": 2, "8m": 3}
FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


# Frames of the project's own files are shown relative to the checkout.
REPO = str(Path(__file__).resolve().parent.parent)


def _short(frame: str) -> str:
    """``function (path/to/module.py:12)`` → ``function (module.py)``; lines merged."""
    found = FRAME.match(frame.strip())
    if not found:
        return frame.strip()
    path = found["file"]
    for marker in ("site-packages/", "/lib/python3.11/", f"{REPO}/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{found['function']} ({path})"


def aggregate(raw: str) -> tuple[Counter[str], Counter[str], int]:
    """(self samples, inclusive samples, total samples) from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_short(frame) for frame in stack.split(";")]
        samples = int(count)
        total += samples
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    return own, inclusive, total


def table(title: str, counts: Counter[str], total: int, top: int) -> list[str]:
    lines = [f"### {title}", "", "| % samples | frame |", "|---|---|"]
    for frame, samples in counts.most_common(top):
        lines.append(f"| {100 * samples / total:5.1f} | `{frame}` |")
    return lines


def profile(workload: str, seconds: int, out: Path, *, passthrough: bool = False) -> str:
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as scratch:
        orthanc = Orthanc(Path(scratch) / "orthanc").start()
        try:
            study = data.hit_study(orthanc.upload)
            load = hits.workloads(study)[WORKLOADS[workload]]
            proxy = Proxy(orthanc.dicomweb, *(["--no-cache"] if passthrough else []))
            try:
                if not passthrough:
                    hits.warm(proxy.url, load, "X-Cache")
                return _sample(proxy, load, seconds, out, "pass-through" if passthrough else "hits")
            finally:
                proxy.stop()
        finally:
            orthanc.stop()


def _sample(proxy: Proxy, load: hits.Workload, seconds: int, out: Path, mode: str) -> str:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    raw = out / f"profile-{mode}-{load.name.split()[0]}.txt"
    command = [spy, "record", "--pid", str(proxy.pid), "--duration", str(seconds)]
    command += ["--rate", "200", "--format", "raw", "--output", str(raw), "--nonblocking"]
    sampler = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    result = wrk.run(proxy.url, load.paths, load.headers, seconds=seconds + 2, connections=16)
    sampler.wait(60)
    own, inclusive, total = aggregate(raw.read_text())
    header = (
        f"## Profile: {mode}, {load.name}, 16 connections, {seconds} s of py-spy samples\n\n"
        f"wrk meanwhile: {result.rps:.0f} req/s, p50 {result.p50_ms:.2f} ms, "
        f"p99 {result.p99_ms:.2f} ms (sampling slows the proxy a little). {total} samples; "
        f"idle samples (the event loop waiting in epoll) count as self time of `select`.\n"
    )
    lines = [header, *table("Self time", own, total, 25), ""]
    lines += [*table("Inclusive time", inclusive, total, 40), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="512k")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--no-cache", action="store_true", help="profile pass-through instead")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    text = profile(args.workload, args.seconds, args.out, passthrough=args.no_cache)
    suffix = "-no-cache" if args.no_cache else ""
    (args.out / f"profile-{args.workload}{suffix}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
