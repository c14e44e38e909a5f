"""STOW-RS building blocks without a network: spooling, batch planning, retry timing."""

from __future__ import annotations

import errno
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from yarl import URL

from proxy.dicomweb.stow_response import Sop
from proxy.errors import InsufficientStorage, MalformedBody, UnsupportedMediaType
from proxy.stow import spool as spool_module
from proxy.stow.batch import Batch, encode, plan
from proxy.stow.send import Policy, Sender, _retry_after
from proxy.stow.spool import Instance, Kind, SpooledPart, spool
from tests.dicomgen import make_study

CT = "1.2.840.10008.5.1.4.1.1.2"


async def once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def multipart(parts: list[tuple[dict[str, str], bytes]], boundary: str = "b") -> bytes:
    body = b""
    for headers, data in parts:
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        body += f"--{boundary}\r\n{lines}\r\n".encode() + data + b"\r\n"
    return body + f"--{boundary}--".encode()


XML_ITEM = """<?xml version="1.0"?>
<NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM">
  <DicomAttribute tag="00080016" vr="UI"><Value number="1">{cls}</Value></DicomAttribute>
  <DicomAttribute tag="00080018" vr="UI"><Value number="1">{uid}</Value></DicomAttribute>
  <DicomAttribute tag="0020000D" vr="UI"><Value number="1">9.9</Value></DicomAttribute>
  <DicomAttribute tag="7FE00010" vr="OW"><BulkData uri="{uri}"/></DicomAttribute>
</NativeDicomModel>"""


async def test_spool_identifies_dicom_parts_without_pixel_data(tmp_path: Path) -> None:
    study = make_study(1, 2, rows=16, columns=16)
    parts = [({"Content-Type": "application/dicom"}, d) for _, _, d in study.instances]
    body = multipart([*parts, ({}, b"\x00" * 200)])
    result = await spool(
        once(body), 'multipart/related; type="application/dicom"; boundary=b', tmp_path
    )
    assert [i.sop.sop_instance for i in result.instances] == [u for _, u, _ in study.instances]
    assert {i.study for i in result.instances} == {study.uid}
    assert [f.reason for f in result.rejected] == [0xC000]
    assert [i.parts[0].size for i in result.instances] == [len(d) for _, _, d in study.instances]


async def test_spool_groups_xml_items_with_their_bulk_data(tmp_path: Path) -> None:
    body = multipart(
        [
            (
                {"Content-Type": "application/dicom+xml"},
                XML_ITEM.format(cls=CT, uid="1.1", uri="b/1").encode(),
            ),
            ({"Content-Type": "application/octet-stream", "Content-Location": "b/2"}, b"22"),
            (
                {"Content-Type": "application/dicom+xml"},
                XML_ITEM.format(cls=CT, uid="1.2", uri="b/2").encode(),
            ),
            ({"Content-Type": "application/octet-stream", "Content-Location": "b/1"}, b"1"),
            ({"Content-Type": "application/dicom+xml"}, b"<not-xml"),
        ]
    )
    result = await spool(
        once(body), 'multipart/related; type="application/dicom+xml"; boundary=b', tmp_path
    )
    found = {i.sop.sop_instance: [p.content_location for p in i.parts] for i in result.instances}
    assert found == {"1.1": ["", "b/1"], "1.2": ["", "b/2"]}
    assert len(result.rejected) == 1


async def test_spool_json_items_without_uids_are_rejected(tmp_path: Path) -> None:
    items = [{"00080018": {"vr": "UI", "Value": ["1.2"]}}]
    body = multipart([({"Content-Type": "application/dicom+json"}, json.dumps(items).encode())])
    kind = 'multipart/related; type="application/dicom+json"; boundary=b'
    result = await spool(once(body), kind, tmp_path)
    assert result.instances == [] and len(result.rejected) == 1
    bad = multipart([({"Content-Type": "application/dicom+json"}, b"{nope")])
    with pytest.raises(MalformedBody, match="not valid JSON"):
        await spool(once(bad), kind, tmp_path / "2")


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/dicom+json", 'multipart/related; type="image/png"; boundary=b',
     "multipart/mixed; boundary=b"],
)  # fmt: skip
async def test_unsupported_media_types(tmp_path: Path, content_type: str) -> None:
    with pytest.raises(UnsupportedMediaType):
        await spool(once(b""), content_type, tmp_path)


async def test_full_spool_disk_is_507(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Full:
        async def __aenter__(self) -> Full:
            return self

        async def __aexit__(self, *args: Any) -> None:
            return None

        async def write(self, data: bytes) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spool_module.aiofiles, "open", lambda *a, **k: Full())
    with pytest.raises(InsufficientStorage):
        await spool(once(b"x" * 10), "application/dicom", tmp_path)


def instance(number: int, size: int, tmp_path: Path) -> Instance:
    path = tmp_path / f"i{number}"
    path.write_bytes(b"x" * size)
    part = SpooledPart(path, size, "application/dicom")
    return Instance("9.9", "9.8", Sop(CT, f"1.{number}"), (part,))


@pytest.mark.parametrize(
    ("sizes", "max_instances", "max_bytes", "expected"),
    [([100] * 7, 3, 10**6, [3, 3, 1]),
     ([100] * 4, 50, 600, [2, 2]),
     ([100] * 4, 50, 680, [3, 1]),
     ([10, 5000, 10], 50, 1000, [1, 1, 1]),
     ([100], 1, 1, [1])],
)  # fmt: skip
async def test_plan_and_exact_lengths(
    tmp_path: Path, sizes: list[int], max_instances: int, max_bytes: int, expected: list[int]
) -> None:
    instances = [instance(n, size, tmp_path) for n, size in enumerate(sizes)]
    batches = plan(Kind.DICOM, instances, max_instances, max_bytes)
    assert [len(b.instances) for b in batches] == expected
    for batch in batches:
        body = encode(batch)
        streamed = b"".join([chunk async for chunk in body.stream()])
        assert len(streamed) == body.length
        if len(batch.instances) > 1:
            assert body.length <= max_bytes


def test_halves() -> None:
    batch = Batch(Kind.DICOM, tuple(Instance("s", "r", Sop(CT, str(n)), ()) for n in range(5)))
    first, second = batch.halves()
    assert [len(first.instances), len(second.instances)] == [2, 3]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, None), ("", None), ("3", 3.0), (" 0 ", 0.0), ("soon", None),
     ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)],
)  # fmt: skip
def test_retry_after(value: str | None, seconds: float | None) -> None:
    assert _retry_after(value) == seconds


@pytest.mark.parametrize(
    ("attempt", "retry_after", "low", "high"),
    [(1, None, 0.05, 0.1), (3, None, 0.2, 0.4), (1, 2.0, 2.0, 2.0), (30, None, 60.0, 60.0),
     (1, 1000.0, 60.0, 60.0)],
)  # fmt: skip
def test_backoff_with_jitter_honours_retry_after(
    attempt: int, retry_after: float | None, low: float, high: float
) -> None:
    sender = Sender(None, URL("http://x/"), {}, Policy(3, 0.1, 2))  # type: ignore[arg-type]
    for _ in range(20):
        assert low <= sender._delay(attempt, retry_after) <= high
