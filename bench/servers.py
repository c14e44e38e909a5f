"""The processes under test, each started by the harness and stopped by it.

The proxy runs as ``python -m proxy serve`` (its own process, as in production); the
WAN relay and the counting relay run as ``python -m bench.wan`` / ``bench.counter``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.nginx import _children
from harness.net import free_port
from harness.processes import stop

ADMIN_TOKEN = "bench-admin-token"


def wait_port(
    port: int, timeout: float = 30.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process {process.args!r} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


class Process:
    """A ``python -m MODULE ARGS`` child listening on ``port``; with ``tree``, the module
    is imported from that checkout instead of this one (``bench.ab``)."""

    def __init__(self, module: str, args: list[str], port: int, tree: Path | None = None) -> None:
        self.port = port
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=tree,
            env={**os.environ, "PYTHONPATH": str(tree)} if tree else None,
        )
        wait_port(port, process=self.process)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop(self.process, 30)


class Proxy(Process):
    """The proxy under test, with an admin token so the harness can read and purge it."""

    def __init__(
        self, upstream: str, *extra: str, module: str = "proxy", tree: Path | None = None
    ) -> None:
        self.data_dir = tempfile.TemporaryDirectory(prefix="bench-proxy-")
        port = free_port()
        args = ["serve", "--upstream-url", upstream, "--listen", f"127.0.0.1:{port}"]
        args += ["--data-dir", self.data_dir.name, "--admin-token", ADMIN_TOKEN]
        args += ["--log-level", "warning", *extra]
        super().__init__(module, args, port, tree)

    def processes(self) -> int:
        """How many processes serve: 1, or 1 + workers when ``--workers`` forks."""
        return 1 + len(_children(self.pid))

    def pids(self) -> list[int]:
        """The process and its workers: whose CPU time is the proxy's."""
        return [self.pid, *_children(self.pid)]

    def admin(self, method: str = "GET") -> dict[str, object]:
        request = urllib.request.Request(
            self.url + "/admin/cache",
            method=method,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return dict(json.loads(response.read()))

    def stop(self) -> None:
        super().stop()
        self.data_dir.cleanup()


def wan(
    target_port: int, *, delay_ms: float = 25.0, rate_mbit: float = 100.0, slow_start: bool = False
) -> Process:
    port = free_port()
    args = [str(port), str(target_port), f"--delay-ms={delay_ms}", f"--rate-mbit={rate_mbit}"]
    args += ["--slow-start"] if slow_start else []
    return Process("bench.wan", args, port)


def hit_floor(body: Path, head: Path) -> Process:
    """``bench.floors``' hit server: ``body`` after ``head`` for every request."""
    port = free_port()
    return Process("bench.floors", ["hit", str(port), str(body), str(head)], port)


def relay_floor(origin: str) -> Process:
    """``bench.floors``' bare aiohttp relay in front of the server at ``origin``."""
    port = free_port()
    return Process("bench.floors", ["relay", str(port), origin], port)


def counter(target_url: str) -> Process:
    port = free_port()
    return Process("bench.counter", [str(port), target_url], port)


def counts(relay: Process, reset: bool = False) -> dict[str, int]:
    request = urllib.request.Request(
        relay.url + "/_bench/counts", method="DELETE" if reset else "GET"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return dict(json.loads(response.read()))


def orthanc_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="bench-orthanc-"))
