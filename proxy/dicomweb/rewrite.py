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

# A host, IPv6 literal or port: what may stand between ``//`` and the base path.
_AUTHORITY = rb"[A-Za-z0-9.\-_~%:\[\]@]{1,255}"
# What may follow the base path for it to be the whole base (not ``/dicom-webX``).
_AFTER = rb"""(?=[/?#"'<>\s\\]|&quot;|$)"""

# Media types whose bodies may carry upstream URLs (JSON, XML, WADL).
_TEXTUAL = ("json", "xml", "wadl")


def carries_urls(content_type: str) -> bool:
    """True for response bodies that may carry upstream URLs and so are rewritten."""
    lowered = content_type.lower()
    main = lowered.split(";", 1)[0].strip()
    if main.startswith("multipart/"):
        # Multipart XML metadata (PS3.18 10.4.1.1.2): type="application/dicom+xml".
        return "dicom+xml" in lowered
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
