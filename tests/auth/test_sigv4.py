"""SigV4 canonical query and payload hash, without a network or botocore."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import pytest
from yarl import URL

from proxy.auth import sigv4
from proxy.upstream import Once


@pytest.mark.parametrize(
    ("url", "query"),
    [
        ("http://h/studies", ""),
        ("http://h/studies?PatientName=DOE*", "PatientName=DOE%2A"),
        ("http://h/studies?ModalitiesInStudy=CT,MR", "ModalitiesInStudy=CT%2CMR"),
        ("http://h/studies?a=1+2", "a=1%2B2"),  # a plus sign, never a space
        ("http://h/studies?a=%7e&b=x%20y", "a=~&b=x%20y"),
        ("http://h/studies?b=2&a=1", "b=2&a=1"),  # pair order kept
        ("http://h/studies?flag", "flag"),
    ],
)
def test_canonical_url_encodes_the_query_as_sigv4_does(url: str, query: str) -> None:
    canonical = sigv4.canonical_url(URL(url))
    assert canonical.raw_query_string == query
    assert canonical.raw_path == URL(url).raw_path


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


BIG = b"x" * sigv4.THREAD_HASH_FROM


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (None, sigv4.EMPTY_SHA256),  # no body
        (lambda: b"", sigv4.EMPTY_SHA256),
        (lambda: b"abc", hashlib.sha256(b"abc").hexdigest()),
        (lambda: _chunks(b"a", b"bc"), hashlib.sha256(b"abc").hexdigest()),
        (lambda: _chunks(BIG, b"!"), hashlib.sha256(BIG + b"!").hexdigest()),
        (Once(_chunks(b"once")), sigv4.UNSIGNED_PAYLOAD),  # can be read only once
        (Once(b"once"), sigv4.UNSIGNED_PAYLOAD),
    ],
)
async def test_payload_hash(data: object, expected: str) -> None:
    assert await sigv4.payload_hash(data) == expected
