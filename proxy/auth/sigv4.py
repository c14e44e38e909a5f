"""AWS Signature Version 4 of one upstream request (AWS IAM User Guide, "Create a signed
AWS API request"), for service ``medical-imaging``; the signing itself is botocore's.

Every request is signed just before it is sent:

- payload hash (``x-amz-content-sha256``): the hex SHA-256 of the body.  A STOW batch
  is streamed from its spool files twice, once to hash and once to send, so nothing is
  held in memory; an empty body hashes as the empty string.  A body that streams once
  (a client's own upload of something other than STOW, which HealthImaging does not
  serve) is signed ``UNSIGNED-PAYLOAD`` rather than buffered.
- the query is sent exactly as SigV4 canonicalises it (RFC 3986 unreserved characters
  only, the rest %XX), so that ``*`` and ``,`` in a QIDO query mean the same bytes to
  the signer and the service;
- signed headers: ``host``, ``content-type``, ``content-length`` and every ``x-amz-*``;
  any ``x-amz-*`` header a client sent is dropped first.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterable
from typing import Any
from urllib.parse import quote, unquote

from yarl import URL

from proxy.auth.credentials import Outgoing

SERVICE = "medical-imaging"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
# Hash chunks at least this large in a worker thread (hashlib releases the GIL).
THREAD_HASH_FROM = 256 * 1024
_SIGNED = frozenset({"host", "content-type", "content-length"})


async def payload_hash(body: Any) -> str:
    """The hex SHA-256 of the body (x-amz-content-sha256), read from a fresh body of
    its factory; ``UNSIGNED-PAYLOAD`` for a body that can be read only once
    (``upstream.Once``: hashing would consume it)."""
    if body is None:
        return EMPTY_SHA256
    if not getattr(body, "replayable", True):
        return UNSIGNED_PAYLOAD
    return await _digest(body())


async def _digest(body: Any) -> str:
    if body is None:
        return EMPTY_SHA256
    if isinstance(body, bytes):
        return hashlib.sha256(body).hexdigest()
    digest = hashlib.sha256()
    stream: AsyncIterable[bytes] = body
    async for chunk in stream:
        if len(chunk) >= THREAD_HASH_FROM:
            await asyncio.to_thread(digest.update, chunk)
        else:
            digest.update(chunk)
    return digest.hexdigest()


def canonical_url(url: URL) -> URL:
    """``url`` with its query encoded as SigV4's canonical query string encodes it
    (every byte but A-Z a-z 0-9 - _ . ~ as %XX), pair order kept.  ``+`` is a plus
    sign here (RFC 3986), never a space."""
    raw = url.raw_query_string
    if not raw:
        return url
    pairs = []
    for pair in raw.split("&"):
        key, sep, value = pair.partition("=")
        pairs.append(_strict(key) + sep + _strict(value))
    return URL(str(url.with_query(None)) + "?" + "&".join(pairs), encoded=True)


def _strict(component: str) -> str:
    return quote(unquote(component), safe="-_.~")


def sign(sdk_credentials: Any, region: str, request: Outgoing, payload: str) -> None:
    """Add ``Authorization``, ``X-Amz-Date``, ``X-Amz-Content-SHA256`` (and
    ``X-Amz-Security-Token``) to ``request``, signed over the headers listed above."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    headers = request.headers
    for name in [name for name in headers if name.lower().startswith("x-amz-")]:
        headers.popall(name, None)
    headers["Host"] = request.url.host_port_subcomponent or ""
    headers["X-Amz-Content-SHA256"] = payload
    signed = {name: value for name, value in headers.items() if name.lower() in _SIGNED}
    signed["X-Amz-Content-SHA256"] = payload
    aws_request = AWSRequest(method=request.method, url=str(request.url), headers=signed)
    SigV4Auth(sdk_credentials, SERVICE, region).add_auth(aws_request)
    for name in ("Authorization", "X-Amz-Date", "X-Amz-Security-Token"):
        if name in aws_request.headers:
            headers[name] = aws_request.headers[name]
