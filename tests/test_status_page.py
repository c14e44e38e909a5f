"""The ``/admin/`` status page, signed into and clicked through in headless Chromium."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest
from aiohttp import web
from playwright.sync_api import Browser, Page

from harness.dicomgen import Study
from harness.orthanc import Orthanc
from proxy import admin
from proxy.state import CACHE, DEAD_LETTERS
from proxy.stow.service import Replayed
from tests.support import ProxyThread, make_settings

TOKEN = "status-page-token-8f3a"


class FakeDeadLetters:
    """Stands in for :class:`proxy.stow.service.DeadLetterService`."""

    def __init__(self) -> None:
        self.items = {
            "dl-1": {"id": "dl-1", "study": "1.2.3", "status": 503, "reason": "retries exhausted"},
            "dl-2": {"id": "dl-2", "study": "1.2.4", "status": 413, "reason": "<b>too large</b>"},
        }
        self.replayed: list[str] = []
        self.dropped: list[str] = []

    async def entries(self) -> Sequence[Mapping[str, object]]:
        return list(self.items.values())

    async def replay(self, entry_id: str) -> Replayed:
        self.replayed.append(entry_id)
        stored = self.items.pop(entry_id, None) is not None
        return Replayed(entry_id, stored, "1.2.3", 200 if stored else 503, None)

    async def drop(self, entry_id: str) -> None:
        self.dropped.append(entry_id)
        self.items.pop(entry_id, None)


@pytest.fixture
def dead_letters() -> FakeDeadLetters:
    return FakeDeadLetters()


@pytest.fixture
def admin_proxy(
    orthanc: Orthanc, tmp_path: Path, dead_letters: FakeDeadLetters, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ProxyThread]:
    async def fakes(app: web.Application) -> None:
        """After the cleanup_ctx steps: the cache's figures and the dead letter replaced."""
        stats = {"entries": 1234, "bytes": 5 * 1024**3, "hits": 75, "misses": 25}
        monkeypatch.setattr(app[CACHE], "stats", lambda: stats)
        app[DEAD_LETTERS] = dead_letters  # type: ignore[assignment]

    def register(app: web.Application) -> None:
        app.on_startup.append(fakes)

    settings = make_settings(orthanc.dicomweb, tmp_path / "proxy", admin_token=TOKEN)
    proxy = ProxyThread(settings, register).start()
    yield proxy
    proxy.stop()


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def sign_in(page: Page, proxy: ProxyThread, token: str) -> None:
    page.goto(proxy.url + "/admin/")
    page.fill("#token", token)
    page.click("button[type=submit]")


def test_sign_in_and_read_the_figures(
    admin_proxy: ProxyThread, browser: Browser, study: Study, tmp_path: Path
) -> None:
    qido = f"{admin_proxy.dicomweb}/studies?PatientName=Doe%5EJane&StudyInstanceUID={study.uid}"
    assert get(qido)[0] == 200
    context = browser.new_context()
    page = context.new_page()

    sign_in(page, admin_proxy, "not-the-token")
    assert page.locator(".error").inner_text() == "That token is not valid."
    assert context.cookies() == []

    sign_in(page, admin_proxy, TOKEN)
    assert page.locator("h1").inner_text() == "dicomweb-proxy status"
    (cookie,) = context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert TOKEN not in cookie["value"]

    cache = page.locator("#cache").inner_text()
    assert "1,234" in cache and "5.0 GiB" in cache and "75.0% (75 of 100)" in cache
    assert "Served from upstream" in cache
    assert "Ready\tyes" in page.locator("#upstream").inner_text()
    recent = page.locator("#recent").inner_text()
    assert "/dicom-web/studies?PatientName=&StudyInstanceUID=" in recent
    content = page.content()
    assert "Doe" not in content and study.uid not in content and TOKEN not in content
    # Dead-letter values are shown as text, never as markup.
    assert "<b>too large</b>" in page.locator("#dead-letter").inner_text()
    page.screenshot(path=str(tmp_path / "admin.png"), full_page=True)
    context.close()


def test_dead_letter_buttons_replay_and_drop(
    admin_proxy: ProxyThread, browser: Browser, dead_letters: FakeDeadLetters
) -> None:
    context = browser.new_context()
    page = context.new_page()
    sign_in(page, admin_proxy, TOKEN)
    page.locator("#dead-letter tr", has_text="dl-2").locator("button[name=drop]").click()
    assert page.locator(".notice").inner_text() == "Dropped."
    assert dead_letters.dropped == ["dl-2"]
    assert "dl-2" not in page.locator("#dead-letter").inner_text()

    page.locator("#dead-letter tr", has_text="dl-1").locator("button[name=replay]").click()
    assert page.locator(".notice").inner_text() == "Replayed: the instance was stored upstream."
    assert dead_letters.replayed == ["dl-1"]
    assert page.locator("#dead-letter").inner_text().endswith("No entries.")

    page.click("text=Sign out")
    assert page.locator("#token").is_visible()
    context.close()


def test_bearer_token_still_works_and_others_are_refused(admin_proxy: ProxyThread) -> None:
    status, body = get(admin_proxy.url + "/admin/", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and "dicomweb-proxy status" in body
    status, body = get(admin_proxy.url + "/admin/", {"Authorization": "Bearer wrong"})
    assert status == 401 and 'name="token"' in body
    forged = {"Cookie": f"{admin.SESSION_COOKIE}=9999999999.00ff"}
    assert get(admin_proxy.url + "/admin/", forged)[0] == 401


def test_page_without_a_cache_says_not_available(
    proxy: ProxyThread, orthanc: Orthanc, tmp_path: Path
) -> None:
    settings = make_settings(orthanc.dicomweb, tmp_path / "bare", admin_token=TOKEN, no_cache=True)
    bare = ProxyThread(settings).start()
    try:
        status, body = get(bare.url + "/admin/", {"Authorization": f"Bearer {TOKEN}"})
    finally:
        bare.stop()
    assert status == 200
    assert "<th>Disk cache</th><td>not available</td>" in body
    assert '<section id="dead-letter"><h2>Dead letter</h2><p>No entries.</p>' in body
    # Admin disabled: nothing to discover.
    assert get(proxy.url + "/admin/")[0] == 404
