"""Shared fixtures: a real Orthanc, synthetic studies, and proxies in front of them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.dicomgen import Study, make_study
from harness.orthanc import Orthanc
from tests.support import ProxyThread, make_settings


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

    def start(upstream_url: str, **overrides: Any) -> ProxyThread:
        data_dir = tmp_path / f"proxy-{len(started)}"
        proxy = ProxyThread(make_settings(upstream_url, data_dir, **overrides)).start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture
def proxy(orthanc: Orthanc, start_proxy: Callable[..., ProxyThread]) -> ProxyThread:
    """The proxy with default settings in front of the session's Orthanc."""
    return start_proxy(orthanc.dicomweb)
