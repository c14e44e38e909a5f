"""The real OHIF viewer, in headless Chromium, showing a study through the proxy.

The pinned ``@ohif/app`` build is fetched once with ``npm pack`` (the demo's code) and
cached in ``.dicomweb-proxy/viewer/``; the browser is Debian's ``/usr/bin/chromium``
driven by Playwright (never ``playwright install``).
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Request, Response

from demo.ohif import viewer_dist
from harness.dicomgen import PHANTOM_PATIENT, Study, make_study
from harness.net import free_port
from harness.orthanc import Orthanc
from tests.fake_upstream import FakeUpstream
from tests.support import ProxyThread

SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "viewer.png"
# Readiness waits, not timed assertions: OHIF's first load compiles a 17 MiB bundle.
LOAD_TIMEOUT_MS = 90_000

# True once a cornerstone viewport canvas shows an image: enough lit pixels.
CANVAS_SHOWS_IMAGE = """() => {
  for (const canvas of document.querySelectorAll('canvas.cornerstone-canvas')) {
    if (!canvas.width || !canvas.height) continue;
    const copy = document.createElement('canvas');
    copy.width = canvas.width;
    copy.height = canvas.height;
    const context = copy.getContext('2d');
    context.drawImage(canvas, 0, 0);
    const data = context.getImageData(0, 0, copy.width, copy.height).data;
    let lit = 0;
    for (let i = 0; i < data.length; i += 4) {
      if (data[i] + data[i + 1] + data[i + 2] > 60) lit++;
    }
    if (lit > (data.length / 4) * 0.05) return true;
  }
  return false;
}"""


PREFLIGHTED_FETCH = """async (url) => {
  const response = await fetch(url, {
    headers: {'Accept': 'application/dicom+json', 'X-Request-ID': 'viewer-test',
              'Cache-Control': 'no-cache'},
  });
  return [response.status, (await response.json()).length];
}"""


@pytest.fixture(scope="session")
def ohif() -> Path:
    """The pinned OHIF build; a registry fetch the first time, the cache afterwards."""
    return viewer_dist()


@pytest.fixture(scope="session")
def phantom(orthanc: Orthanc) -> Study:
    study = make_study(2, 20, rows=256, columns=256, phantom=True, **PHANTOM_PATIENT)
    for _, _, data in study.instances:
        orthanc.upload(data)
    return study


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    yield context.new_page()
    context.close()


@dataclass
class Traffic:
    """What the page asked of the DICOMweb base, and what failed."""

    responses: list[tuple[int, str, str]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def watch(self, page: Page) -> Traffic:
        page.on("response", self._response)
        page.on("requestfailed", self._failed)
        return self

    def _response(self, response: Response) -> None:
        if "/dicom-web" in response.url:
            kind = response.headers.get("content-type", "")
            self.responses.append((response.status, response.url, kind))

    def _failed(self, request: Request) -> None:
        if "/dicom-web" in request.url:
            self.failed.append(f"{request.url} {request.failure}")

    @property
    def errors(self) -> list[str]:
        bad = [f"{status} {url}" for status, url, _ in self.responses if status >= 400]
        return bad + self.failed

    def urls(self, needle: str) -> list[str]:
        return [url for _, url, _ in self.responses if needle in url]


def open_study(page: Page, viewer_base: str, study_uid: str) -> Traffic:
    """Open the study in the viewer and wait until a viewport shows pixels."""
    traffic = Traffic().watch(page)
    page.goto(f"{viewer_base}/viewer/viewer?StudyInstanceUIDs={study_uid}")
    page.wait_for_function(CANVAS_SHOWS_IMAGE, timeout=LOAD_TIMEOUT_MS, polling=250)
    return traffic


def dismiss_overlays(page: Page) -> None:
    """The first-visit tour and notice, so the screenshot shows the image.  The tour's
    overlay may cover the notice's button, so the clicks are dispatched to the buttons
    themselves rather than aimed at where they appear."""
    for name in ("Skip all", "Confirm and hide"):
        button = page.get_by_role("button", name=name)
        if button.count():
            button.first.dispatch_event("click")


def test_viewer_shows_the_study_through_the_proxy(
    tmp_path: Path,
    page: Page,
    ohif: Path,
    orthanc: Orthanc,
    phantom: Study,
    start_proxy: Callable[..., ProxyThread],
) -> None:
    proxy = start_proxy(orthanc.dicomweb, viewer_dir=str(ohif))
    traffic = open_study(page, proxy.url, phantom.uid)
    page.wait_for_load_state("networkidle")
    assert traffic.errors == []
    # What OHIF asks for, all through the proxy: QIDO with includefield, series-level
    # metadata, frames for the images and the thumbnails.
    assert traffic.urls("/studies?") and all(
        "includefield=" in url for url in traffic.urls("/studies?")
    )
    for series_uid in phantom.series:
        assert traffic.urls(f"/series/{series_uid}/metadata")
    frames = [item for item in traffic.responses if "/frames/" in item[1]]
    assert frames and all(kind.startswith("multipart/related") for _, _, kind in frames)
    dismiss_overlays(page)
    page.wait_for_function(CANVAS_SHOWS_IMAGE, timeout=LOAD_TIMEOUT_MS)
    page.screenshot(path=str(screenshot_path(tmp_path)))


def screenshot_path(tmp_path: Path) -> Path:
    """``docs/viewer.png`` when asked for (or missing): a test run leaves git clean."""
    if SCREENSHOT.exists() and not os.environ.get("UPDATE_SCREENSHOT"):
        return tmp_path / SCREENSHOT.name
    SCREENSHOT.parent.mkdir(exist_ok=True)
    return SCREENSHOT


def test_viewer_on_another_origin_with_cors_origins(
    page: Page,
    ohif: Path,
    orthanc: Orthanc,
    phantom: Study,
    start_proxy: Callable[..., ProxyThread],
) -> None:
    viewer_port = free_port()
    viewer_origin = f"http://127.0.0.1:{viewer_port}"
    api = start_proxy(orthanc.dicomweb, cors_origins=(viewer_origin,))
    # A second proxy only hosts the viewer; its app-config points at the other one.
    start_proxy(
        orthanc.dicomweb,
        listen=f"127.0.0.1:{viewer_port}",
        viewer_dir=str(ohif),
        public_url=api.dicomweb,
    )
    traffic = open_study(page, viewer_origin, phantom.uid)
    page.wait_for_load_state("networkidle")
    assert traffic.errors == []
    assert traffic.responses
    assert all(url.startswith(api.dicomweb) for _, url, _ in traffic.responses)
    # A request with non-safelisted headers makes the browser send a preflight first.
    status = page.evaluate(
        PREFLIGHTED_FETCH, f"{api.dicomweb}/studies?StudyInstanceUID={phantom.uid}"
    )
    assert status == [200, 1]


def test_viewer_on_another_origin_without_cors_origins_is_blocked(
    page: Page,
    ohif: Path,
    orthanc: Orthanc,
    phantom: Study,
    start_proxy: Callable[..., ProxyThread],
) -> None:
    """The control for the test above: the browser enforces what --cors-origins allows."""
    viewer_port = free_port()
    api = start_proxy(orthanc.dicomweb)
    start_proxy(
        orthanc.dicomweb,
        listen=f"127.0.0.1:{viewer_port}",
        viewer_dir=str(ohif),
        public_url=api.dicomweb,
    )
    traffic = Traffic().watch(page)
    with page.expect_event("requestfailed", timeout=LOAD_TIMEOUT_MS):
        page.goto(f"http://127.0.0.1:{viewer_port}/viewer/viewer?StudyInstanceUIDs={phantom.uid}")
    assert traffic.failed


# -- the cache, counted on what reaches the upstream ----------------------------------


def test_reload_is_served_from_the_cache(
    page: Page,
    ohif: Path,
    phantom: Study,
    relay: FakeUpstream,
    start_proxy: Callable[..., ProxyThread],
) -> None:
    proxy = start_proxy(relay.dicomweb, viewer_dir=str(ohif))
    open_study(page, proxy.url, phantom.uid)
    page.wait_for_load_state("networkidle")
    first = {r.path for r in relay.received if "/frames/" in r.path or r.path.endswith("/metadata")}
    assert any("/frames/" in path for path in first)
    assert any(path.endswith("/metadata") for path in first)
    relay.received.clear()
    page.reload()
    page.wait_for_function(CANVAS_SHOWS_IMAGE, timeout=LOAD_TIMEOUT_MS, polling=250)
    page.wait_for_load_state("networkidle")
    # OHIF loads slices lazily, so a reload may ask for slices the first load never
    # did; none that was already fetched may reach the upstream again.
    again = [r.path for r in relay.received if r.path in first]
    assert again == []


# -- what OHIF asks for besides frames, checked without a browser ---------------------

OHIF_BULK_ACCEPT = "multipart/related; type=application/octet-stream; transfer-syntax=*"


def test_bulkdata_uris_point_at_the_proxy_and_resolve(proxy: ProxyThread, study: Study) -> None:
    """OHIF (``bulkDataURI.enabled``) follows BulkDataURIs of series metadata as given."""
    series_uid = next(iter(study.series))
    metadata = _get_json(f"{proxy.dicomweb}/studies/{study.uid}/series/{series_uid}/metadata")
    uris = [v["BulkDataURI"] for item in metadata for v in item.values() if "BulkDataURI" in v]
    assert len(uris) == len(study.series[series_uid])
    assert all(uri.startswith(proxy.dicomweb + "/studies/") for uri in uris)
    request = urllib.request.Request(uris[0], headers={"Accept": OHIF_BULK_ACCEPT})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["Content-Type"].startswith("multipart/related")
        assert b"--" in response.read()


def _get_json(url: str) -> Any:
    request = urllib.request.Request(url, headers={"Accept": "application/dicom+json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)
