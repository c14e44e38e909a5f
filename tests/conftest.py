"""Shared fixtures: a real Orthanc, synthetic studies, the one fake upstream (alone or
relaying to Orthanc), proxies in front of them, and a headless Chromium."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp.test_utils import TestClient

from harness.dicomgen import Study, make_study
from harness.orthanc import Orthanc
from proxy.app import create_app
from tests.fake_upstream import FakeUpstream
from tests.support import ProxyThread, make_settings

if TYPE_CHECKING:
    from playwright.sync_api import Browser

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """One real Orthanc + DICOMweb plugin for the session; tests use fresh UIDs."""
    server = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    yield server
    server.stop()


@pytest.fixture
def study(orthanc: Orthanc) -> Study:
    """A fresh 2-series, 3-instance-each study stored in Orthanc."""
    created = make_study(series_count=2, instances_per_series=3)
    for _, _, data in created.instances:
        orthanc.upload(data)
    return created


@pytest.fixture
def start_proxy(tmp_path: Path) -> Iterator[Callable[..., ProxyThread]]:
    """Start proxies (in threads) in front of any upstream; all stopped at teardown."""
    started: list[ProxyThread] = []

    def start(
        upstream_url: str, clock: Callable[[], float] = time.time, **overrides: Any
    ) -> ProxyThread:
        data_dir = tmp_path / f"proxy-{len(started)}"
        settings = make_settings(upstream_url, data_dir, **overrides)
        proxy = ProxyThread(settings, clock=clock).start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture
def proxy(orthanc: Orthanc, start_proxy: Callable[..., ProxyThread]) -> ProxyThread:
    """The proxy with default settings in front of the session's Orthanc."""
    return start_proxy(orthanc.dicomweb)


@pytest.fixture
def proxy_to(aiohttp_client: ClientFactory, tmp_path: Path) -> Callable[..., Any]:
    """Start the proxy's app on the test's own loop (aiohttp's test client) in front of
    an upstream's DICOMweb URL.  Proxies started with the same ``data`` share a data
    directory (and so a cache); ``clock`` is the cache's (tests.support.FakeClock to step
    through a TTL)."""

    async def start(
        upstream: str,
        data: str = "data",
        clock: Callable[[], float] = time.time,
        **overrides: Any,
    ) -> TestClient[Any, Any]:
        settings = make_settings(upstream, tmp_path / data, **overrides)
        return await aiohttp_client(create_app(settings, clock=clock))

    return start


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    """The fake upstream (tests/fake_upstream.py) on a free 127.0.0.1 port, in its own
    thread: no routes, no origin, until the test gives them."""
    with FakeUpstream() as started:
        yield started


@pytest.fixture
def relay(fake: FakeUpstream, orthanc: Orthanc) -> FakeUpstream:
    """The fake upstream relaying every request to the session's Orthanc and recording
    it; a test adds routes for the faults it needs."""
    fake.origin = orthanc.url
    return fake


# Module scope: sync Playwright keeps an event loop running in this thread while it is
# open, which pytest-asyncio tests in other modules must not find there.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, driven by Playwright (never ``playwright install``)."""
    from playwright.sync_api import sync_playwright

    if not shutil.which(CHROMIUM):
        pytest.fail("Debian's chromium is required (make os-packages installs it)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(autouse=True)
def root_logging_restored() -> Iterator[None]:
    """``main([...])`` configures the root logger (a stderr handler, ``log_setup``);
    later tests, and the terminal, must not inherit it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
