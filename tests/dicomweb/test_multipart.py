"""The streaming multipart/related reader and writer (RFC 2046 section 5.1.1)."""

from __future__ import annotations

import pytest

from proxy.dicomweb import multipart
from proxy.dicomweb.media import parse_media_type
from proxy.dicomweb.multipart import MultipartReader, boundary_of
from proxy.errors import MalformedBody
from tests.support import pieces, read_multipart

CHUNK_SIZES = [1, 3, 17, 4096]


async def read_all(data: bytes, boundary: str, size: int) -> list[tuple[dict[str, str], bytes]]:
    return await read_multipart(data, boundary, [size])


@pytest.mark.parametrize(
    "value",
    [
        "multipart/related; type=application/dicom",
        "multipart/related; boundary=",
        "multipart/related; boundary=" + "x" * 201,
        'multipart/related; boundary="ends with space "',
        "multipart/related; boundary=bad{char}",
    ],
)
def test_invalid_boundaries(value: str) -> None:
    with pytest.raises(MalformedBody):
        boundary_of(parse_media_type(value))


@pytest.mark.parametrize(
    "boundary",
    [
        # Orthanc 1.10's STOW-RS client and WADO-RS answers: 73 characters, over RFC 2046's 70.
        "1ccbd4e2-3ff8-46d2-978a-8e20d88cd27c-dde4559e-27b0-463d-bbea-a4274ad4c123",
        "b" * 200,
    ],
)
async def test_boundaries_longer_than_rfc_2046_are_read(boundary: str) -> None:
    value = f"multipart/related; type=application/dicom; boundary={boundary}"
    assert boundary_of(parse_media_type(value)) == boundary
    body = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\nDATA\r\n--{boundary}--\r\n"
    assert await read_all(body.encode(), boundary, 7) == [
        ({"content-type": "application/dicom"}, b"DATA")
    ]


def test_a_boundary_over_200_characters_is_named_in_the_error() -> None:
    with pytest.raises(MalformedBody, match="longer than 200"):
        boundary_of(parse_media_type("multipart/related; boundary=" + "x" * 201))


WELL_FORMED = [
    # (name, body, expected parts)
    (
        "crlf",
        b"--B\r\nContent-Type: application/dicom\r\n\r\nAAA\r\n--B\r\n\r\nBB\r\n--B--\r\n",
        [({"content-type": "application/dicom"}, b"AAA"), ({}, b"BB")],
    ),
    (
        "preamble and epilogue",
        b"preamble text\r\n--B\r\nX-A: 1\r\n\r\ndata\r\n--B--\r\nepilogue\r\n--B\r\nignored",
        [({"x-a": "1"}, b"data")],
    ),
    (
        "lf only",
        b"--B\nContent-Type: a/b\n\nline1\nline2\n--B\nContent-Type: c/d\n\n\n--B--\n",
        [({"content-type": "a/b"}, b"line1\nline2"), ({"content-type": "c/d"}, b"")],
    ),
    (
        "padding after boundary, no final crlf",
        b"--B  \t\r\nA: x\r\n folded\r\n\r\n\r\n\r\n--B--",
        [({"a": "x folded"}, b"\r\n")],
    ),
    (
        "body holds boundary-like text",
        b"--B\r\n\r\n--Bx is not at a line start\r\n-B\r\n--B--",
        [({}, b"--Bx is not at a line start\r\n-B")],
    ),
]


@pytest.mark.parametrize("size", CHUNK_SIZES)
@pytest.mark.parametrize(("name", "body", "expected"), WELL_FORMED, ids=[c[0] for c in WELL_FORMED])
async def test_reads_well_formed_bodies(
    name: str, body: bytes, expected: list[tuple[dict[str, str], bytes]], size: int
) -> None:
    assert await read_all(body, "B", size) == expected


MALFORMED = [
    ("no boundary at all", b"just some bytes", "no multipart boundary"),
    ("no close delimiter", b"--B\r\n\r\ndata without end", "closing multipart boundary"),
    ("garbage after boundary", b"--B junk\r\n\r\nx\r\n--B--", "after a multipart boundary"),
    ("headers never end", b"--B\r\nA: 1\r\nB: 2", "inside a multipart part's headers"),
    ("header without name", b"--B\r\n: x\r\n\r\ny\r\n--B--", "no name"),
    ("headers too long", b"--B\r\nA: " + b"x" * 20000, "exceed"),
]


@pytest.mark.parametrize(("name", "body", "message"), MALFORMED, ids=[c[0] for c in MALFORMED])
async def test_malformed_bodies_say_what_is_wrong(name: str, body: bytes, message: str) -> None:
    with pytest.raises(MalformedBody, match=message):
        await read_all(body, "B", 5)


async def test_large_part_streams_in_bounded_chunks() -> None:
    payload = bytes(range(256)) * 8192  # 2 MiB
    body = b"--B\r\n\r\n" + payload + b"\r\n--B--\r\n"
    reader = MultipartReader(pieces(body, [65536]), "B")
    assert await reader.next_part() == {}
    received = bytearray()
    while chunk := await reader.read():
        assert len(chunk) <= 65536 + 16
        received += chunk
    assert bytes(received) == payload
    assert await reader.next_part() is None


async def test_skipping_an_unread_part() -> None:
    body = b"--B\r\n\r\nfirst\r\n--B\r\nA: 2\r\n\r\nsecond\r\n--B--"
    reader = MultipartReader(pieces(body, [4]), "B")
    assert await reader.next_part() == {}
    assert await reader.next_part() == {"a": "2"}


async def test_writer_round_trip() -> None:
    boundary = multipart.new_boundary()
    assert boundary != multipart.new_boundary()
    bodies = [b"\r\n--not-the-boundary\r\n", b"", b"x" * 1000]
    data = b"".join(
        multipart.part_head(boundary, [("Content-Type", "application/dicom")])
        + body
        + multipart.PART_END
        for body in bodies
    ) + multipart.closing(boundary)
    content_type = multipart.content_type(boundary, "application/dicom")
    media = parse_media_type(content_type)
    assert media.params["type"] == "application/dicom"
    got = await read_all(data, boundary_of(media), 7)
    assert [body for _, body in got] == bodies
