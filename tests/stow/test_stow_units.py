"""STOW-RS building blocks without a network: spooling, batch planning, retry timing."""

from __future__ import annotations

import errno
import io
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from yarl import URL

from harness.dicomgen import make_study
from proxy.dicomweb.stow_response import Sop
from proxy.errors import InsufficientStorage, MalformedBody, UnsupportedMediaType
from proxy.stow import spool as spool_module
from proxy.stow.batch import Batch, encode, plan
from proxy.stow.dead_letter import DeadLetter, new_record
from proxy.stow.http import wants_xml
from proxy.stow.identify import dicom_instance
from proxy.stow.parts import Instance, Kind, SpooledPart
from proxy.stow.send import Sender, SendPolicy, _retry_after
from proxy.stow.spool import spool

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


async def test_spool_keeps_every_part_byte_exact_in_one_file(tmp_path: Path) -> None:
    study = make_study(1, 3, rows=16, columns=16)
    data = [d for _, _, d in study.instances]
    body = multipart([({"Content-Type": "application/dicom"}, d) for d in data])
    result = await spool(
        chunked(body, 7), 'multipart/related; type="application/dicom"; boundary=b', tmp_path
    )
    parts = [i.parts[0] for i in result.instances]
    assert {p.path for p in parts} == {tmp_path / spool_module.BODY}
    assert [p.read() for p in parts] == data
    assert [p.read(5, 10) for p in parts] == [d[5:15] for d in data]


def test_a_part_is_identified_from_its_own_bytes_only(tmp_path: Path) -> None:
    """An instance cut in two right before SOP Class UID, the halves side by side in a
    spool file: the first half (a header without UIDs) is no instance, though the bytes
    after it in the file complete it."""
    _, uid, data = make_study(1, 1, rows=16, columns=16).instances[0]
    cut = data.index(b"\x08\x00\x16\x00UI")  # (0008,0016), explicit VR little endian
    path = tmp_path / spool_module.BODY
    path.write_bytes(data)
    assert dicom_instance(SpooledPart(path, cut, "application/dicom")) is None
    assert dicom_instance(SpooledPart(path, len(data) - cut, "application/dicom", "", cut)) is None
    whole = dicom_instance(SpooledPart(path, len(data), "application/dicom"))
    assert whole is not None and whole.sop.sop_instance == uid


async def chunked(data: bytes, pieces: int) -> AsyncIterator[bytes]:
    step = len(data) // pieces + 1
    for start in range(0, len(data), step):
        yield data[start : start + step]


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
    class Full(io.BytesIO):
        def write(self, data: Any) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spool_module, "open", lambda *a, **k: Full(), raising=False)
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
    sender = Sender(None, URL("http://x/"), {}, SendPolicy(3, 0.1, 2))  # type: ignore[arg-type]
    for _ in range(20):
        assert low <= sender._delay(attempt, retry_after) <= high


@pytest.mark.parametrize("kernel_copy", [True, False])
def test_dead_letter_takes_a_part_out_of_the_spool_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kernel_copy: bool
) -> None:
    """The kept part is exactly its byte range of the spool file, whether the kernel
    copies it or (across filesystems that refuse) a buffer does; replay reads it back."""
    if not kernel_copy:

        def refuse(*args: Any) -> int:
            raise OSError(errno.EXDEV, "Invalid cross-device link")

        monkeypatch.setattr(os, "copy_file_range", refuse)
    body = tmp_path / spool_module.BODY
    body.write_bytes(b"A" * 100 + b"B" * 3000 + b"C" * 50)
    part = SpooledPart(body, 3000, "application/dicom", "", 100)
    instance = Instance("9.9", "9.8", Sop(CT, "1.1"), (part,))
    letters = DeadLetter(tmp_path / "dead")
    record = new_record(
        instance, Kind.DICOM, request_id="r", target="studies", status=503, reason=0xA700,
        attempts=3, detail="",
    )  # fmt: skip
    letters.keep(instance, Kind.DICOM, record)
    kept, _, _ = letters.instance(record.id)
    assert [p.read() for p in kept.parts] == [b"B" * 3000]
    assert kept.parts[0].offset == 0


@pytest.mark.parametrize(
    ("accept", "xml"),
    [
        ("", False),
        ("*/*", False),
        ("application/dicom+xml", True),
        ("application/dicom+json", False),
        ("application/dicom+xml, application/dicom+json", False),  # a tie goes to JSON
        ("application/dicom+xml;q=0.9, application/dicom+json;q=0.5", True),
        ("application/dicom+json;q=0.1, application/dicom+xml", True),
        ("application/dicom+xml;q=bogus", False),
        ("APPLICATION/DICOM+XML", True),
        ("text/html", False),
    ],
)
def test_the_stow_response_is_xml_when_the_client_ranks_it_first(accept: str, xml: bool) -> None:
    """PS3.18 section 10.5.3: DICOM JSON unless the Accept prefers DICOM XML."""
    assert wants_xml(accept) is xml
