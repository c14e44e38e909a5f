"""Run the proxy for tests: in a background thread with its own event loop.

A thread (not the test's loop) lets synchronous clients such as ``dicomweb-client``
talk to it, and keeps start-up in milliseconds.  Also :func:`eventually` (and
:func:`eventually_async`), the one way tests wait for something the proxy does just
after a client has its answer, and :class:`FakeClock`, the cache's clock in tests that
step through a TTL rather than sleep through it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar, cast

from aiohttp import web

from harness.dicomgen import Study
from harness.net import free_port
from proxy import server
from proxy.app import create_app
from proxy.dicomweb.multipart import MultipartReader
from proxy.settings import Settings

T = TypeVar("T")


def eventually(
    check: Callable[[], T],
    *,
    timeout: float = 10.0,
    interval: float = 0.01,
    message: str = "the condition was not met",
) -> T:
    """Call ``check`` every ``interval`` seconds until it returns something truthy, and
    return that; fail with ``message`` once ``timeout`` seconds have passed without."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(_not_met(message, timeout, value))
        time.sleep(interval)


async def eventually_async(
    check: Callable[[], T | Awaitable[T]],
    *,
    timeout: float = 10.0,
    interval: float = 0.01,
    message: str = "the condition was not met",
) -> T:
    """:func:`eventually` without blocking the event loop; ``check`` may be a coroutine
    function (it is awaited each time)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return cast(T, value)
        if time.monotonic() > deadline:
            raise AssertionError(_not_met(message, timeout, value))
        await asyncio.sleep(interval)


def _not_met(message: str, timeout: float, value: object) -> str:
    last = "" if value is None or value is False else f"; last: {value!r:.200}"
    return f"{message} (waited {timeout:g} s{last})"


class FakeClock:
    """Wall-clock seconds that move only when the test says so: give it to
    ``create_app(settings, clock=...)`` and :meth:`advance` past a TTL."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ProxyThread:
    def __init__(
        self,
        settings: Settings,
        configure: Callable[[web.Application], None] | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``configure`` may add to the app before it starts (e.g. register providers);
        ``clock`` is the cache's (:class:`FakeClock`)."""
        self.settings = settings
        self._configure = configure
        self._clock = clock
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.app: web.Application | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.listen_port}"

    @property
    def dicomweb(self) -> str:
        return self.url + self.settings.base_path

    def start(self) -> ProxyThread:
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError("proxy did not start")
        if self._error:
            raise self._error
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.app = create_app(self.settings, clock=self._clock)
        if self._configure is not None:
            self._configure(self.app)
        runner = server.Runner(self.app)  # the product's connections and access log
        try:
            self.loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", self.settings.listen_port)
            self.loop.run_until_complete(site.start())
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())
        self.loop.close()

    def call(self, coroutine: Any) -> Any:
        """Run a coroutine on the proxy's loop (e.g. to inspect the cache)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(30)


def make_settings(upstream_url: str, data_dir: Path, **overrides: Any) -> Settings:
    base = Settings(
        upstream_url=upstream_url,
        listen=f"127.0.0.1:{free_port()}",
        data_dir=str(data_dir),
    )
    return dataclasses.replace(base, **overrides)


def serve_process(
    upstream_url: str, data_dir: Path, port: int, *extra: str, stderr: Any = None
) -> subprocess.Popen[bytes]:
    """``python -m proxy serve`` as its own process (for signals, RSS, kill -9)."""
    command = [
        sys.executable, "-m", "proxy", "serve", "--upstream-url", upstream_url,
        "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}", *extra,
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr or subprocess.DEVNULL)


def multipart_stow(study: Study, boundary: str = "client-boundary") -> tuple[bytes, str]:
    """A client's STOW-RS body (PS3.18 10.5) holding every instance of ``study``."""
    body = (
        b"".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
            for _, _, data in study.instances
        )
        + f"--{boundary}--\r\n".encode()
    )
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


async def pieces(data: bytes, sizes: list[int]) -> AsyncIterator[bytes]:
    """``data`` in pieces of ``sizes`` in turn (the whole of it when ``sizes`` is empty):
    a body as the network may cut it."""
    start, index = 0, 0
    while start < len(data):
        size = sizes[index % len(sizes)] if sizes else len(data)
        yield data[start : start + size]
        start += size
        index += 1


async def read_multipart(
    data: bytes, boundary: str, sizes: list[int]
) -> list[tuple[dict[str, str], bytes]]:
    """Every part of a multipart body read through the proxy's streaming reader, the
    body arriving in pieces of ``sizes``."""
    reader = MultipartReader(pieces(data, sizes), boundary)
    parts = []
    while (headers := await reader.next_part()) is not None:
        body = b""
        while chunk := await reader.read():
            body += chunk
        parts.append((headers, body))
    return parts
