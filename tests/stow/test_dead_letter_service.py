"""stow.service.DeadLetterService, which the JSON routes, the status page and the CLI share."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.dicomweb.stow_response import Sop
from proxy.metrics import Metrics
from proxy.settings import Settings
from proxy.stow.dead_letter import DeadLetter, new_record
from proxy.stow.service import DeadLetterService
from proxy.stow.spool import Instance, Kind, SpooledPart
from tests.support import make_settings

CT = "1.2.840.10008.5.1.4.1.1.2"
GAUGE = "dicomweb_proxy_dead_letter_entries"


def keep(settings: Settings, tmp_path: Path, sop: str) -> str:
    body = tmp_path / f"body-{sop}"
    body.write_bytes(b"DICM" * 8)
    instance = Instance(
        "9.9", "9.8", Sop(CT, sop), (SpooledPart(body, 32, "application/dicom", "", 0),)
    )
    record = new_record(
        instance, Kind.DICOM, request_id="r", target="studies", status=503, reason=0xA700,
        attempts=3, detail="",
    )  # fmt: skip
    return DeadLetter(settings.dead_letter_path).keep(instance, Kind.DICOM, record).id


async def test_list_show_and_drop_refresh_the_gauge(tmp_path: Path) -> None:
    settings = make_settings("http://127.0.0.1:9/dicom-web", tmp_path)
    first, second = keep(settings, tmp_path, "1.1"), keep(settings, tmp_path, "1.2")
    found = Metrics()
    dead_letters = DeadLetterService(settings, metrics=found)
    assert {entry["id"] for entry in await dead_letters.entries()} == {first, second}
    assert (await dead_letters.entry(second))["sop_instance"] == "1.2"
    await dead_letters.drop(first)
    assert found.value(GAUGE) == 1
    assert [entry["id"] for entry in await dead_letters.entries()] == [second]


async def test_without_metrics_or_upstream(tmp_path: Path) -> None:
    """The CLI's list/show/drop run without either; replay needs the upstream."""
    settings = make_settings("http://127.0.0.1:9/dicom-web", tmp_path)
    entry = keep(settings, tmp_path, "1.1")
    dead_letters = DeadLetterService(settings)
    await dead_letters.drop(entry)
    assert await dead_letters.entries() == []
    with pytest.raises(RuntimeError, match="needs an upstream"):
        await dead_letters.replay(entry)
