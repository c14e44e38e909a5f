"""The fleet on loopback: Orthanc behind a byte-counting relay, N proxy replicas, HAProxy.

Every piece is its own process, as in production.  A replica keeps its data directory
and its port across a stop and a start, as a StatefulSet pod keeps its name and its
volume claim, so a replica that comes back finds its cache and its place on the ring.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from bench.nginx import _unprivileged
from bench.servers import ADMIN_TOKEN, Process, wait_port
from harness.net import free_port

BALANCERS = Path(__file__).resolve().parents[2] / "deploy" / "balancers"
HAPROXY_CONFIG = BALANCERS / "haproxy.cfg"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def round_robin(config: str) -> str:
    """The reference config with the study hashing replaced by plain round robin: the
    comparison the fleet figures are measured against (nothing else changes)."""
    hashing = '    balance uri depth "${DICOMWEB_HASH_DEPTH-3}" path-only\n'
    consistent = "    hash-type consistent\n"
    if config.count(hashing) != 1 or config.count(consistent) != 1:
        raise ValueError("the reference HAProxy config no longer has its hashing lines")
    return config.replace(hashing, "    balance roundrobin\n").replace(consistent, "")


class Relay(Process):
    """``bench.counter`` in front of ``target``: what crossed to the archive."""

    def __init__(self, target: str) -> None:
        port = free_port()
        super().__init__("bench.counter", [str(port), target], port)

    def counts(self, reset: bool = False) -> dict[str, list[int]]:
        request = urllib.request.Request(
            self.url + "/_bench/tally", method="DELETE" if reset else "GET"
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return dict(json.loads(response.read()))


class Replica:
    """One ``python -m proxy serve`` whose port and data directory outlive its process."""

    def __init__(self, name: str, upstream: str, public_url: str, data_dir: Path) -> None:
        self.name = name
        self.port = free_port()
        self.data_dir = data_dir
        self.args = [
            sys.executable,
            *("-m", "proxy", "serve", "--upstream-url", upstream),
            *("--listen", f"127.0.0.1:{self.port}", "--data-dir", str(data_dir)),
            *("--public-url", public_url, "--admin-token", ADMIN_TOKEN),
            *("--log-level", "warning"),
        ]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def launch(self) -> Replica:
        """Start the process; :meth:`wait` until it listens (several launch at once)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir.with_suffix(".log"), "ab") as log:
            self.process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)
        return self

    def wait(self) -> Replica:
        if self.process is None:
            raise RuntimeError(f"{self.name} was not launched")
        wait_port(self.port, process=self.process)
        return self

    def start(self) -> Replica:
        return self.launch().wait()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        """SIGTERM as Kubernetes sends it (in-flight requests finish), or SIGKILL."""
        if self.process is None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Haproxy:
    """Debian's haproxy running ``config`` (the reference file, or its round-robin twin)
    in the foreground, as ``nobody`` when the harness runs as root."""

    def __init__(
        self, config: str, replicas: Sequence[Replica], *, port: int, check_inter: str
    ) -> None:
        self._scratch = tempfile.TemporaryDirectory(prefix="fleet-haproxy-")
        self.prefix = Path(self._scratch.name)
        (self.prefix / "haproxy.cfg").write_text(config)
        self.port = port
        self.stats_port = free_port()
        self.environ = {
            **{f"DICOMWEB_PROXY_{i}": replica.address for i, replica in enumerate(replicas)},
            "DICOMWEB_BALANCER_LISTEN": f"127.0.0.1:{self.port}",
            "DICOMWEB_STATS_LISTEN": f"127.0.0.1:{self.stats_port}",
            "DICOMWEB_CHECK_INTER": check_inter,
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def check(self) -> None:
        """``haproxy -c``: the config parses with this environment."""
        done = subprocess.run(
            [HAPROXY, "-c", "-q", "-f", str(self.prefix / "haproxy.cfg")],
            env={**os.environ, **self.environ},
            capture_output=True,
            text=True,
            timeout=30,
        )
        if done.returncode != 0:
            raise RuntimeError(f"haproxy -c failed:\n{done.stdout}{done.stderr}")

    def start(self) -> Haproxy:
        self.check()
        command = [HAPROXY, "-db", "-f", str(self.prefix / "haproxy.cfg")]
        with open(self.prefix / "haproxy.log", "wb") as log:
            self.process = subprocess.Popen(
                _unprivileged(self.prefix) + command,
                env={**os.environ, **self.environ},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_port(self.port, process=self.process)
        wait_port(self.stats_port, process=self.process)
        return self

    def states(self, backend: str = "by-study") -> dict[str, str]:
        """Server name -> UP / DOWN / ... as HAProxy's stats page says."""
        url = f"http://127.0.0.1:{self.stats_port}/stats;csv"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode().lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        skip = {"FRONTEND", "BACKEND"}
        return {
            row["svname"]: row["status"].split()[0]
            for row in rows
            if row["pxname"] == backend and row["svname"] not in skip
        }

    def wait_state(self, server: str, state: str, timeout: float = 30.0) -> float:
        """Seconds until HAProxy reports ``server`` in ``state``."""
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            if self.states().get(server) == state:
                return time.monotonic() - began
            time.sleep(0.05)
        raise RuntimeError(f"{server} not {state} after {timeout} s: {self.states()}")

    def log(self) -> str:
        path = self.prefix / "haproxy.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        self._scratch.cleanup()
