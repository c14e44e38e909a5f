"""Upstream -> public URL rewriting on bytes and streams (SPEC section 2)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.dicomweb.rewrite import PartURLs, Rewriter, carries_urls

UP = "http://10.0.0.5:8042/dicom-web"
PUB = "https://edge.example/dicom-web"
R = Rewriter(UP, PUB)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (f'"{UP}/studies/1.2"', f'"{PUB}/studies/1.2"'),
        ('"http://pacs.internal/dicom-web/studies/1"', f'"{PUB}/studies/1"'),
        ('"https://lb:443/dicom-web?x=1"', f'"{PUB}?x=1"'),
        (
            f'<BulkData uri="{UP}/studies/1/bulk/7FE00010"/>',
            f'<BulkData uri="{PUB}/studies/1/bulk/7FE00010"/>',
        ),
        ('"http://pacs/dicom-webX/studies"', '"http://pacs/dicom-webX/studies"'),
        ('"http://pacs/other/studies"', '"http://pacs/other/studies"'),
        (f"{UP}", f"{PUB}"),
    ],
)
def test_rewrite_bytes(body: str, expected: str) -> None:
    assert R.rewrite_bytes(body.encode()) == expected.encode()


def test_upstream_without_base_path_rewrites_only_itself() -> None:
    rewriter = Rewriter("http://pacs:8042", "http://proxy")
    body = b'"http://pacs:8042/studies/1" "http://other:8042/studies/1"'
    assert rewriter.rewrite_bytes(body) == b'"http://proxy/studies/1" "http://other:8042/studies/1"'


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("application/dicom+json", True),
        ("application/json; charset=utf-8", True),
        ("application/dicom+xml", True),
        ("application/vnd.sun.wadl+xml", True),
        ('multipart/related; type="application/dicom+xml"; boundary=x', True),
        ('multipart/related; type="application/dicom"; boundary=x', False),
        ("application/dicom", False),
        ("image/png", False),
        ("application/octet-stream", False),
    ],
)
def test_carries_urls(content_type: str, expected: bool) -> None:
    assert carries_urls(content_type) is expected


@settings(deadline=None)  # a loaded CI machine must not turn slowness into failure
@given(
    pieces=st.lists(
        st.sampled_from(
            [
                f'"{UP}/studies/1"',
                '"http://x:1/dicom-web"',
                "abc",
                "http://",
                "/dicom-web",
                '"',
                "\n",
            ]
        ),
        max_size=60,
    ),
    cuts=st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=30),
)
def test_streaming_equals_whole_body(pieces: list[str], cuts: list[int]) -> None:
    body = "".join(pieces).encode() * 3
    stream, out, position = R.stream(), b"", 0
    for size in cuts * 20:
        if position >= len(body):
            break
        out += stream.feed(body[position : position + size])
        position += size
    out += stream.feed(body[position:]) + stream.flush()
    assert out == R.rewrite_bytes(body)


# -- part headers of multipart bodies ---------------------------------------------------

PART_BOUNDARY = "1ccbd4e2-3ff8-46d2-978a-8e20d88cd27c-dde4559e-27b0-463d-bbea-a4274ad4c123"


def frames_body(base: str, payload: bytes, line_end: bytes = b"\r\n") -> bytes:
    """Two frames as Orthanc answers them: each part names its own URL under ``base``."""
    parts, end = b"", line_end.decode()
    for number in (1, 2):
        head = (
            f"--{PART_BOUNDARY}\r\nContent-Type: application/octet-stream{end}"
            f"Content-Location: {base}/studies/1.2/series/1.3/instances/1.4/frames/{number}"
            f"{end}{end}"
        ).encode()
        parts += head + payload + b"\r\n"
    return parts + f"--{PART_BOUNDARY}--\r\n".encode()


def fed(stream: object, body: bytes, size: int) -> bytes:
    feed, flush = stream.feed, stream.flush  # type: ignore[attr-defined]
    return b"".join(feed(body[i : i + size]) for i in range(0, len(body), size)) + flush()


@pytest.mark.parametrize("size", [1, 5, 73, 200, 4096, 1 << 20])
@pytest.mark.parametrize("line_end", [b"\r\n", b"\n"])
def test_part_headers_are_rewritten_and_part_bodies_never(size: int, line_end: bytes) -> None:
    # Pixel data that happens to hold an upstream URL stays as it is, byte for byte.
    payload = b"\x00\x01http://localhost/dicom-web/studies/9\xff" * 50
    body = frames_body("http://localhost/dicom-web", payload, line_end)
    out = fed(R.part_stream(PART_BOUNDARY), body, size)
    assert out == frames_body(PUB, payload, line_end)
    assert out.count(payload) == 2


@pytest.mark.parametrize("size", [1, 7, 4096])
def test_part_urls_judged_on_the_first_part_and_on_any(size: int) -> None:
    pattern = R.pattern
    with_urls = frames_body("http://localhost/dicom-web", b"x" * 100)
    without = frames_body("http://localhost/dicom-web", b"x")
    without = without.replace(b"Content-Location: http://localhost/dicom-web", b"Content-ID: <a")
    for body, expected in ((with_urls, True), (without, False)):
        watch = PartURLs(pattern, PART_BOUNDARY)
        for start in range(0, len(body), size):
            watch.feed(body[start : start + size])
        watch.end()
        assert (watch.first, watch.any) == (expected, expected)


def test_no_part_headers_yet_means_not_judged() -> None:
    watch = PartURLs(R.pattern, PART_BOUNDARY)
    watch.feed(f"--{PART_BOUNDARY}\r\nContent-Type: application/dicom".encode())
    assert watch.first is None
    watch.end()
    assert watch.first is False
