"""``--prefetch series|study``: an instance miss warms its siblings (SPEC section 1)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from harness.dicomgen import Study, make_study
from harness.orthanc import Orthanc
from proxy.app import create_app
from tests.fake_upstream import FakeUpstream
from tests.support import eventually_async, make_settings

FRAME_ACCEPT = "multipart/related; type=application/octet-stream; transfer-syntax=*"


@pytest.fixture(scope="module")
def series_study(orthanc: Orthanc) -> Study:
    created = make_study(series_count=2, instances_per_series=5, rows=32, columns=32)
    for _, _, data in created.instances:
        orthanc.upload(data)
    return created


async def start(
    relay: FakeUpstream, aiohttp_client: Callable[..., Any], tmp_path: Path, prefetch: str
) -> TestClient[Any, Any]:
    settings = make_settings(relay.dicomweb, tmp_path / "d", prefetch=prefetch)
    return await aiohttp_client(create_app(settings))


def frame(study: Study, index: int) -> str:
    series_uid, sop_uid, _ = study.instances[index]
    return f"/dicom-web/studies/{study.uid}/series/{series_uid}/instances/{sop_uid}/frames/1"


@pytest.mark.parametrize(("scope", "warmed"), [("series", range(5)), ("study", range(10))])
async def test_a_miss_warms_the_rest_of_its_series_or_study(
    relay: FakeUpstream,
    aiohttp_client: Callable[..., Any],
    series_study: Study,
    tmp_path: Path,
    scope: str,
    warmed: range,
) -> None:
    client = await start(relay, aiohttp_client, tmp_path, scope)
    first = await client.get(frame(series_study, 2), headers={"Accept": FRAME_ACCEPT})
    assert first.headers["X-Cache"] == "MISS"
    await first.read()
    await eventually_async(
        lambda: all(relay.count(frame(series_study, i)) == 1 for i in warmed),
        timeout=6,
        interval=0.02,
        message="read-ahead did not ask for every sibling",
    )
    cache = client.server.app[_cache_key()]
    await eventually_async(
        lambda: not cache._fills, timeout=6, interval=0.02, message="read-ahead did not finish"
    )
    for index in warmed:
        hit = await client.get(frame(series_study, index), headers={"Accept": FRAME_ACCEPT})
        assert hit.headers["X-Cache"] == "HIT", index
        assert hit.headers["Content-Type"].startswith("multipart/related")
    for index in warmed:
        assert relay.count(frame(series_study, index)) == 1
    if scope == "series":  # the other series was left alone
        assert all(relay.count(frame(series_study, i)) == 0 for i in range(5, 10))
    # Asking again does not list the series a second time.
    listings = relay.count("/instances?")
    await (await client.get(frame(series_study, 3), headers={"Accept": FRAME_ACCEPT})).read()
    assert relay.count("/instances?") == listings == 1


async def test_no_read_ahead_by_default(
    relay: FakeUpstream,
    aiohttp_client: Callable[..., Any],
    series_study: Study,
    tmp_path: Path,
) -> None:
    client = await start(relay, aiohttp_client, tmp_path, "off")
    await (await client.get(frame(series_study, 0), headers={"Accept": FRAME_ACCEPT})).read()
    await asyncio.sleep(0.2)
    assert relay.count("/frames/") == 1
    assert relay.count("/instances?") == 0


def _cache_key() -> Any:
    from proxy.state import CACHE

    return CACHE
