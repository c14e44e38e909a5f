"""Fuzzing the STOW spool with client bodies (hypothesis): parts, or a documented error.

Whatever a client sends as Part 10 bytes, DICOM JSON or Native DICOM XML metadata, the
spool answers identified instances and rejected parts (FailedSOPSequence, 0xC000), or a
400/413/415 problem; never an unhandled exception (a 500).
"""

from __future__ import annotations

import asyncio
import io
import json
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from proxy.errors import ProxyError
from proxy.stow.parts import Spooled, SpooledPart
from proxy.stow.spool import spool

FAST = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)
TAGS = st.sampled_from(["00080016", "00080018", "0020000D", "0020000E", "7FE00010", "Value"])
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.integers(), st.text(max_size=8), st.booleans()),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(TAGS, st.just("BulkDataURI"), st.just("vr")), inner, max_size=4),
    ),
    max_leaves=15,
)


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body


def run_spool(body: bytes, content_type: str) -> Spooled | ProxyError:
    with tempfile.TemporaryDirectory() as directory:
        try:
            return asyncio.run(spool(_once(body), content_type, Path(directory) / "s"))
        except ProxyError as exc:
            return exc


def multipart(part_type: str, parts: list[bytes]) -> tuple[bytes, str]:
    body = b"".join(
        f"--b\r\nContent-Type: {part_type}\r\nContent-Location: bulk{n}\r\n\r\n".encode()
        + data
        + b"\r\n"
        for n, data in enumerate(parts)
    )
    return body + b"--b--\r\n", f'multipart/related; type="{part_type}"; boundary=b'


@FAST
@given(document=JSON_VALUES)
@example(document=[{"00080016": "not an element", "00080018": {"Value": 5}}])
@example(document=[{"00080016": {"Value": "1.2"}, "00080018": {"Value": {}}}])
@example(document=[{"00080016": [], "00080018": {"Value": [None]}, "0020000D": 3}])
def test_json_metadata_parts(document: object) -> None:
    body, content_type = multipart("application/dicom+json", [json.dumps(document).encode()])
    assert isinstance(run_spool(body, content_type), (Spooled, ProxyError))


@FAST
@given(raw=st.binary(max_size=300))
@example(raw=b"[" * 100_000)
@example(raw=b'[{"a":' * 30_000)
def test_json_metadata_bytes(raw: bytes) -> None:
    body, content_type = multipart("application/dicom+json", [raw])
    result = run_spool(body, content_type)
    assert isinstance(result, (Spooled, ProxyError))
    if isinstance(result, ProxyError):
        assert result.status < 500


@FAST
@given(raw=st.binary(max_size=300))
@example(
    raw=b'<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
    b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;">]>'
    b"<NativeDicomModel>&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;</NativeDicomModel>"
)
@example(raw=b"<a>" * 50_000)
@example(raw=b'<NativeDicomModel><DicomAttribute tag="00080018"/></NativeDicomModel>')
def test_xml_metadata_bytes(raw: bytes) -> None:
    body, content_type = multipart("application/dicom+xml", [raw])
    result = run_spool(body, content_type)
    assert isinstance(result, (Spooled, ProxyError))
    if isinstance(result, ProxyError):
        assert result.status < 500


@FAST
@given(raw=st.binary(max_size=400), preamble=st.booleans())
@example(raw=b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff", preamble=False)
@example(raw=b"DICM\x08\x00\x05\x00CS\x0a\x00ISO_IR 192", preamble=True)
def test_part10_bytes(raw: bytes, preamble: bool) -> None:
    data = (b"\x00" * 128 + b"DICM" + raw) if preamble else raw
    body, content_type = multipart("application/dicom", [data])
    result = run_spool(body, content_type)
    assert isinstance(result, (Spooled, ProxyError))
    if isinstance(result, Spooled):
        assert len(result.instances) + len(result.rejected) == 1


@FAST
@given(
    before=st.binary(max_size=300),
    data=st.binary(max_size=200_000),
    after=st.binary(max_size=300),
    moves=st.lists(st.tuples(st.integers(-10, 200_010), st.integers(0, 70_000)), max_size=8),
)
def test_a_spooled_part_reads_like_a_file_of_its_own(
    before: bytes, data: bytes, after: bytes, moves: list[tuple[int, int]]
) -> None:
    """Seek and read on a part of the spool file match the same on its bytes alone."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "body"
        path.write_bytes(before + data + after)
        part = SpooledPart(path, len(data), "application/dicom", "", len(before))
        alone = io.BytesIO(data)
        with part.open() as spooled:
            for position, size in moves:
                assert spooled.seek(max(0, position)) == alone.seek(max(0, position))
                assert spooled.read(size) == alone.read(size)
                assert spooled.tell() == alone.tell()
            assert spooled.read() == alone.read()
