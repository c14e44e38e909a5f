"""The express lane: a repeated cache hit answered before aiohttp parses the request.

Through aiohttp's web layer a hit costs about 250 µs of Python (parser, request object,
four middlewares, routing, the cache key, the head, the access record), whatever its
size; nginx serves the same 512 KiB hit in 80 µs of CPU.  Most hits repeat a request
already answered: the same target and the same headers from the same kind of client.
So the first fresh hit of each such request is *learned* — the status line and headers
exactly as aiohttp sent them, and where the body is (the stored file, or the bytes of a
small body or of a variant held in memory) — under the request's :func:`signature`.
The connection protocol (:mod:`proxy.server`) looks every complete request up here
before aiohttp sees it; a match is answered with a fresh ``Date`` and ``X-Request-ID``
by ``sendfile`` or one write.

Only what cannot change the answer is left out of the signature.  A request is a
candidate when it is one complete ``GET`` in HTTP/1.1 with no body, and each header is
either one of :data:`_SIGNED` (they choose the answer: the public base from ``Host``,
the representation from ``Accept``, the coding from ``Accept-Encoding``) or one of
:data:`_IGNORED` (they do not).  Any other header — ``Range``, a condition,
``Cache-Control``, credentials, ``Origin``, ``Forwarded``, one the lane does not know —
sends the request to aiohttp, as the answer may depend on it.

Before each answer the entry is asked again whether it may be served now without the
upstream (:meth:`proxy.cache.service.Cache.fresh_hit`: purges, eviction, the QIDO TTL
and study finality are the cache's own rules); when it may not, or its body changed,
the request goes to aiohttp and the cache answers it as always.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import HttpVersion11, web

from proxy.cache.file_response import StoredBody
from proxy.cache.policy import Policy
from proxy.cache.store import Hit
from proxy.exchange import REQUEST_ID, Exchange
from proxy.lru import LRU

# One complete request with no body: request line and header lines ending in CRLF
# CRLF (RFC 9112 section 2.1), names as tokens (RFC 9110 section 5.6.2), values of
# visible ASCII.  Anything else (a body, a second request, obs-fold, bare LF, UTF-8)
# is aiohttp's to parse.
_REQUEST = re.compile(
    rb"GET (/[!-~]*) HTTP/1\.1\r\n((?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t -~]*\r\n)*)\r\n"
)
_SIGNED = {b"host": 0, b"accept": 1, b"accept-encoding": 2}
_IGNORED = frozenset(
    {
        b"user-agent",
        b"accept-language",
        b"referer",
        b"dnt",
        b"priority",
        b"sec-fetch-dest",
        b"sec-fetch-mode",
        b"sec-fetch-site",
        b"sec-fetch-user",
        b"sec-ch-ua",
        b"sec-ch-ua-mobile",
        b"sec-ch-ua-platform",
    }
)
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})
_REQUEST_ID = re.compile(REQUEST_ID.encode())
# What the lane never replays from the learned head: set afresh for each answer.
_PER_ANSWER = frozenset({"date", "x-request-id"})

Signature = tuple[bytes, bytes | None, bytes | None, bytes | None]

MAX_ANSWERS = 4096
MAX_HELD_BYTES = 64 * 1024**2  # bodies held in memory by the lane's answers
# A stored body up to this size is read into memory when learned: one sendmsg of head
# and body costs less than a head then a sendfile (and opening the file) per answer.
HOLD_BELOW = 256 * 1024
# Requests seen byte for byte: a client repeats the same bytes for the same resource,
# so the parse is looked up rather than done again (cleared when full).
MAX_SEEN = 8192


@dataclass(frozen=True, slots=True)
class Candidate:
    """A complete bodiless GET: its signature (None when a header may change the
    answer) and the client's well-formed ``X-Request-ID``, if any."""

    signature: Signature | None
    request_id: bytes | None


@dataclass(slots=True)
class Answer:
    """What one signature is answered with."""

    policy: Policy
    body_path: Path  # the stored file; the entry must still be this one
    head: bytes  # status line and headers, without Date, X-Request-ID and the blank line
    size: int
    data: bytes | None  # the body itself when it is held in memory, else sent from the file
    record: dict[str, Any] = field(default_factory=dict)  # access-log fields (proxy.logs)


def parse(data: bytes) -> Candidate | None:
    """``data`` as a :class:`Candidate`, or None when it is not exactly one complete
    GET without a body (then only aiohttp can frame what follows)."""
    match = _REQUEST.fullmatch(data)
    if match is None:
        return None
    target, block = match.groups()
    headers = []
    for line in block.split(b"\r\n")[:-1]:
        name, _, value = line.partition(b":")
        headers.append((name, value.strip(b" \t")))
    return candidate(target, headers)


def candidate(target: bytes, headers: Iterable[tuple[bytes, bytes]]) -> Candidate | None:
    """The signature of a GET to ``target`` with ``headers`` (aiohttp's raw headers when
    learning, the parsed bytes when looking up: one rule for both)."""
    signed: list[bytes | None] = [None, None, None]
    request_id = None
    known = True
    for name, value in headers:
        lowered = name.lower()
        if lowered in _FRAMING:
            return None
        slot = _SIGNED.get(lowered)
        if slot is not None:
            known = known and signed[slot] is None  # a repeated one: aiohttp decides
            signed[slot] = value
        elif lowered == b"x-request-id":
            request_id = value if _REQUEST_ID.fullmatch(value) else None
            known = known and request_id is not None
        elif lowered == b"connection":
            known = known and value.lower() == b"keep-alive"
        elif lowered not in _IGNORED:
            known = False
    signature = (target, signed[0], signed[1], signed[2]) if known else None
    return Candidate(signature, request_id)


class Lane:
    """Learned answers, most recently used last; bounded in count and held bytes."""

    def __init__(
        self,
        fresh_hit: Callable[[Policy], Hit | None],
        *,
        max_answers: int = MAX_ANSWERS,
        max_held_bytes: int = MAX_HELD_BYTES,
    ) -> None:
        self._fresh_hit = fresh_hit
        self._answers: LRU[Signature, Answer] = LRU(
            max_answers, max_weight=max_held_bytes, weigh=_held_bytes
        )
        self.max_answers = max_answers
        self.max_held_bytes = max_held_bytes
        self._seen: dict[bytes, Candidate] = {}
        self.open = True
        self.count = 0  # answers sent
        self._date = b""
        self._date_second = -1

    def __len__(self) -> int:
        return len(self._answers)

    def candidate(self, data: bytes) -> Candidate | None:
        """:func:`parse`, remembered for bytes seen before."""
        found = self._seen.get(data)
        if found is None:
            found = parse(data)
            if found is not None:
                if len(self._seen) >= MAX_SEEN:
                    self._seen.clear()
                self._seen[data] = found
        return found

    def find(self, found: Candidate) -> Answer | None:
        """The answer for ``found`` when its entry may be served right now."""
        if not self.open or found.signature is None:
            return None
        answer = self._answers.get(found.signature)
        if answer is None:
            return None
        hit = self._fresh_hit(answer.policy)
        if hit is None or hit.path != answer.body_path:
            self._answers.pop(found.signature)
            return None
        return answer

    def learn(self, signature: Signature, answer: Answer) -> None:
        if not self.open:
            return
        self._answers.pop(signature)
        if _held_bytes(answer) <= self.max_held_bytes:
            self._answers.put(signature, answer)

    def answered(self) -> None:
        self.count += 1

    def close(self) -> None:
        """Answer nothing more (the proxy is stopping: aiohttp answers 503)."""
        self.open = False
        self._answers.clear()

    def head(self, answer: Answer, request_id: bytes) -> bytes:
        """The learned head with this answer's ``Date`` and ``X-Request-ID``."""
        return b"%sDate: %s\r\nX-Request-ID: %s\r\n\r\n" % (answer.head, self.date(), request_id)

    def date(self) -> bytes:
        """RFC 9110 section 5.6.7 IMF-fixdate of this second, as aiohttp writes it."""
        now = int(time.time())
        if now != self._date_second:
            self._date = email.utils.formatdate(now, usegmt=True).encode()
            self._date_second = now
        return self._date


def _held_bytes(answer: Answer) -> int:
    return len(answer.data) if answer.data is not None else 0


def learned_head(status: int, reason: str, headers: Iterable[tuple[str, str]]) -> bytes | None:
    """A sent response's status line and headers, as replayed; None when the response
    is not one to replay (its framing or connection handling was not the plain one)."""
    lines = [f"HTTP/1.1 {status} {reason}\r\n"]
    for name, value in headers:
        lowered = name.lower()
        if lowered in ("connection", "transfer-encoding"):
            return None
        if lowered not in _PER_ANSWER:
            lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode("latin-1")


async def offer(
    lane: Lane,
    request: web.Request,
    exchange: Exchange,
    policy: Policy,
    hit: Hit,
    response: web.StreamResponse,
) -> None:
    """A fresh hit the cache is answering: sent (here, unless it sent itself: a
    :class:`StoredBody`), then learned when the lane can replay it (a whole 200, from
    the stored file or from bytes in memory): its head is learned as it went out."""
    found = request_candidate(request)
    if found is None or found.signature is None or response.status != 200:
        return
    if isinstance(response, StoredBody):  # status 200: the whole body, not a range
        data = _held(hit) if hit.meta.size <= HOLD_BELOW else None
    elif type(response) is web.Response and isinstance(response.body, bytes):
        data = response.body
    else:
        return
    await response.prepare(request)
    await response.write_eof()
    head = learned_head(response.status, response.reason, response.headers.items())
    if head is None:
        return
    size = len(data) if data is not None else hit.meta.size
    record = {"transaction": exchange.resource.transaction.value, "target": request.raw_path}
    lane.learn(found.signature, Answer(policy, hit.path, head, size, data, record))


def _held(hit: Hit) -> bytes | None:
    """A small stored body, read once to be held by its answer."""
    body = hit.open()
    if body is None:
        return None
    with body:
        data = body.read()
    return data if len(data) == hit.meta.size else None


def request_candidate(request: web.Request) -> Candidate | None:
    """What :func:`parse` makes of the same request, from aiohttp's parsed one."""
    target = request.raw_path
    if request.method != "GET" or request.version != HttpVersion11 or not target.isascii():
        return None
    return candidate(target.encode("ascii"), request.raw_headers)
