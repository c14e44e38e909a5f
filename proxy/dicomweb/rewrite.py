"""Rewrite upstream URLs to the proxy's public base (SPEC section 2).

A URL is rewritten when it starts with the upstream base URL, or with any
``scheme://host[:port]`` followed by the upstream base path: an origin behind a load
balancer announces its own host name, not the one the proxy dialled.  This covers
RetrieveURL (0008,1190) in QIDO-RS and STOW-RS responses (PS3.18 10.6.3, Table
10.5.3-1), BulkDataURI in DICOM JSON (PS3.18 F.2.6), ``<BulkData uri>`` in Native DICOM
XML (PS3.19 A.1.5) and the WADL ``resources@base``.  The rewrite works on bytes, chunk
by chunk, so a 2,000-instance metadata document is never decoded nor held whole.

Pure: no server imports.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from proxy.dicomweb.media import parse_media_type

# A host, IPv6 literal or port: what may stand between ``//`` and the base path.
_AUTHORITY = rb"[A-Za-z0-9.\-_~%:\[\]@]{1,255}"
# What may follow the base path for it to be the whole base (not ``/dicom-webX``).
_AFTER = rb"""(?=[/?#"'<>\s\\]|&quot;|$)"""

# Media types whose bodies may carry upstream URLs (JSON, XML, WADL).
_TEXTUAL = ("json", "xml", "wadl")


def carries_urls(content_type: str) -> bool:
    """True for response bodies that may carry upstream URLs and so are rewritten."""
    main = parse_media_type(content_type).main
    if main.startswith("multipart/"):
        # Multipart XML metadata (PS3.18 10.4.1.1.2): type="application/dicom+xml".
        return "dicom+xml" in content_type.lower()
    return any(word in main for word in _TEXTUAL)


@dataclass(frozen=True)
class Rewriter:
    """Maps upstream URLs in bodies and headers to ``public_base``."""

    upstream_base: str
    public_base: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "_pattern", _compile(self.upstream_base))

    @property
    def pattern(self) -> re.Pattern[bytes]:
        return self._pattern  # type: ignore[attr-defined, no-any-return]

    @property
    def longest_match(self) -> int:
        return len(self.upstream_base) + 300

    def rewrite_bytes(self, body: bytes) -> bytes:
        return self.pattern.sub(self.public_base.encode(), body)

    def rewrite_header(self, value: str) -> str:
        return self.rewrite_bytes(value.encode("latin-1")).decode("latin-1")

    def stream(self) -> StreamRewriter:
        return StreamRewriter(self)

    def part_stream(self, boundary: str) -> PartHeadersRewriter:
        return PartHeadersRewriter(self, boundary)

    def rewrite_part_headers(self, body: bytes, boundary: str) -> bytes:
        stream = self.part_stream(boundary)
        return stream.feed(body) + stream.flush()


def _compile(upstream_base: str) -> re.Pattern[bytes]:
    """Match the upstream base, and any origin followed by its path when it has one."""
    base = upstream_base.rstrip("/").encode()
    scheme_end = base.index(b"://") + 3
    path_start = base.find(b"/", scheme_end)
    path = base[path_start:] if path_start >= 0 else b""
    exact = re.escape(base)
    if not path:
        # With no base path, "any host + path" would match every URL: only the exact base.
        return re.compile(exact + _AFTER)
    any_origin = rb"https?://" + _AUTHORITY + re.escape(path)
    return re.compile(rb"(?:" + exact + rb"|" + any_origin + rb")" + _AFTER)


class StreamRewriter:
    """Feed chunks, get rewritten chunks; a URL split across chunks is held back."""

    def __init__(self, rewriter: Rewriter) -> None:
        self._rewriter = rewriter
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        buffer = self._pending + chunk
        # Everything before ``safe`` can be decided: any match starting there ends
        # before the buffer does, so its look-ahead saw a real byte.
        safe = len(buffer) - self._rewriter.longest_match
        if safe <= 0:
            self._pending = buffer
            return b""
        # JSON strings and XML attributes are quoted, and no URL holds a '"': cut after
        # the last one, where no match can span, and rewrite the head in one pass.
        quote = buffer.rfind(b'"', safe) + 1
        if quote:
            self._pending = buffer[quote:]
            return self._rewriter.rewrite_bytes(buffer[:quote])
        public = self._rewriter.public_base.encode()
        parts: list[bytes] = []
        done = 0
        for match in self._rewriter.pattern.finditer(buffer):
            if match.start() >= safe:
                break
            parts += (buffer[done : match.start()], public)
            done = match.end()
        cut = max(safe, done)
        parts.append(buffer[done:cut])
        self._pending = buffer[cut:]
        return b"".join(parts)

    def flush(self) -> bytes:
        rest, self._pending = self._pending, b""
        return self._rewriter.rewrite_bytes(rest)


# A part's header block ends at its first empty line (RFC 2046 section 5.1.1; bare LF
# tolerated).  A block longer than this is not headers: it passes on unchanged.
_HEAD_END = re.compile(rb"\r?\n\r?\n")
MAX_PART_HEAD = 16 * 1024


class PartHeads:
    """Splits a ``multipart/*`` body, as it streams, into the blocks that open each part
    (its delimiter line and headers) and everything else.  Only the blocks can carry
    URLs a client must not see (Orthanc writes ``Content-Location`` in each frame's
    headers); the part bodies are DICOM data and are never touched."""

    def __init__(self, boundary: str) -> None:
        self._delimiter = b"--" + boundary.encode("latin-1")
        self._pending = b""
        self._in_head = False

    def feed(self, chunk: bytes) -> list[tuple[bool, bytes]]:
        """(is a part's header block, bytes) pieces, in order; a delimiter or header
        block split across chunks is held back until it is whole."""
        data, self._pending = self._pending + chunk, b""
        pieces: list[tuple[bool, bytes]] = []
        position = 0
        while position < len(data):
            if self._in_head:
                end = _HEAD_END.search(data, position)
                if end is None and len(data) - position <= MAX_PART_HEAD:
                    self._pending = data[position:]
                    return pieces
                stop = end.end() if end is not None else len(data)
                pieces.append((end is not None, data[position:stop]))
                position, self._in_head = stop, False
                continue
            found = data.find(self._delimiter, position)
            if found < 0:
                keep = max(position, len(data) - len(self._delimiter) + 1)
                pieces.append((False, data[position:keep]))
                self._pending = data[keep:]
                return pieces
            pieces.append((False, data[position:found]))
            position, self._in_head = found, True
        return pieces

    def flush(self) -> list[tuple[bool, bytes]]:
        rest, self._pending = self._pending, b""
        return [(False, rest)] if rest else []


class PartHeadersRewriter:
    """Feed a multipart body's chunks, get them back with upstream URLs in the part
    headers rewritten (the same interface as :class:`StreamRewriter`)."""

    def __init__(self, rewriter: Rewriter, boundary: str) -> None:
        self._rewriter = rewriter
        self._parts = PartHeads(boundary)

    def feed(self, chunk: bytes) -> bytes:
        return self._join(self._parts.feed(chunk))

    def flush(self) -> bytes:
        return self._join(self._parts.flush())

    def _join(self, pieces: list[tuple[bool, bytes]]) -> bytes:
        rewrite = self._rewriter.rewrite_bytes
        return b"".join(rewrite(data) if head else data for head, data in pieces)


class PartURLs:
    """Watches the part headers of a multipart body for upstream URLs as it streams:
    :attr:`first` is known (not None) once the first part's headers went by, and
    :attr:`any` tells whether any part's did name one so far."""

    def __init__(self, pattern: re.Pattern[bytes], boundary: str) -> None:
        self._pattern = pattern
        self._heads = PartHeads(boundary)
        self.first: bool | None = None
        self.any = False

    def feed(self, chunk: bytes) -> None:
        if self.any:
            return  # nothing left to learn
        for head, data in self._heads.feed(chunk):
            if head:
                found = self._pattern.search(data) is not None
                self.first = found if self.first is None else self.first
                self.any = self.any or found

    def end(self) -> None:
        if self.first is None:
            self.first = False
