"""Upstream -> public URL rewriting on bytes and streams (SPEC section 2)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.dicomweb.rewrite import Rewriter, carries_urls

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
