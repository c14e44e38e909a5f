"""Streaming ``multipart/related`` (RFC 2387) reading and writing.

Framing follows RFC 2046 section 5.1.1: a delimiter is CRLF, ``--`` and the boundary;
the close delimiter adds ``--``; whatever comes before the first delimiter (preamble)
and after the close delimiter (epilogue) is ignored.  Bare LF line ends are tolerated
because some clients send them.  Memory stays bounded: a part body is handed out in
chunks, and only a delimiter's length is held back between chunks.

Pure: no server imports.  Feed the reader any async iterator of bytes.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterable, AsyncIterator, Sequence

from proxy.dicomweb.media import MediaType
from proxy.errors import MalformedBody

MAX_HEADER_BYTES = 16 * 1024
_CR, _LF = 13, 10
# RFC 2046 section 5.1.1 bchars, not ending in a space.  RFC 2046 allows 70 of them;
# real peers write more (Orthanc 1.10: 73), so up to MAX_BOUNDARY are taken (SPEC 2).
MAX_BOUNDARY = 200
_BCHARS = r"0-9A-Za-z'()+_,\-./:=?"
_BOUNDARY = re.compile(rf"^[{_BCHARS} ]{{0,{MAX_BOUNDARY - 1}}}[{_BCHARS}]$")


def boundary_of(media_type: MediaType) -> str:
    """The ``boundary`` parameter, checked against RFC 2046 section 5.1.1."""
    boundary = media_type.params.get("boundary")
    if not boundary:
        raise MalformedBody("multipart/related without a boundary parameter")
    if len(boundary) > MAX_BOUNDARY:
        raise MalformedBody(f"the multipart boundary is longer than {MAX_BOUNDARY} characters")
    if not _BOUNDARY.match(boundary):
        raise MalformedBody("the multipart boundary is not valid (RFC 2046 section 5.1.1)")
    return boundary


# -- reading ---------------------------------------------------------------------------


class MultipartReader:
    """Reads parts one after the other: :meth:`next_part` gives a part's headers (names
    lower-cased), then :meth:`read` its body chunk by chunk until ``b""``."""

    def __init__(self, chunks: AsyncIterable[bytes], boundary: str) -> None:
        self._chunks: AsyncIterator[bytes] = aiter(chunks)
        # Searching for LF + "--" + boundary and dropping a CR before it accepts both
        # CRLF (RFC 2046) and bare LF line ends.
        self._delimiter = b"\n--" + boundary.encode("latin-1")
        # A leading CRLF lets a body that starts right with "--boundary" match.
        self._buffer = b"\r\n"
        self._eof = False
        self._state = "preamble"  # preamble -> headers -> body -> delimiter ... -> done

    async def next_part(self) -> dict[str, str] | None:
        """Skip what is left of the current part; the next part's headers, or None
        after the close delimiter (the epilogue is read and dropped)."""
        while self._state == "body":
            while await self.read():
                pass
        if self._state == "preamble":
            await self._skip_preamble()
        if self._state == "delimiter":
            await self._read_delimiter_line()
        if self._state == "done":
            await self._drain()
            return None
        headers = await self._read_headers()
        self._state = "body"
        return headers

    async def read(self) -> bytes:
        """The next chunk of the current part's body; ``b""`` once it has ended."""
        if self._state != "body":
            return b""
        while True:
            index = self._buffer.find(self._delimiter)
            if index >= 0:
                end = index - 1 if index > 0 and self._buffer[index - 1] == _CR else index
                data, self._buffer = self._buffer[:end], self._buffer[index:]
                self._state = "delimiter"
                return data
            keep = len(self._delimiter) + 1
            if len(self._buffer) > keep:
                data, self._buffer = self._buffer[:-keep], self._buffer[-keep:]
                return data
            if not await self._fill():
                raise MalformedBody("the body ended before the closing multipart boundary")

    async def _fill(self) -> bool:
        if self._eof:
            return False
        try:
            chunk = await anext(self._chunks)
        except StopAsyncIteration:
            self._eof = True
            return False
        self._buffer += chunk
        return True

    async def _skip_preamble(self) -> None:
        while (index := self._buffer.find(self._delimiter)) < 0:
            self._buffer = self._buffer[-len(self._delimiter) :]
            if not await self._fill():
                raise MalformedBody(
                    "no multipart boundary found: the body does not match the boundary "
                    "given in Content-Type"
                )
        self._buffer = self._buffer[index:]
        self._state = "delimiter"

    async def _read_delimiter_line(self) -> None:
        """After ``--boundary``: ``--`` closes; else optional padding and a line end."""
        while len(self._buffer) < len(self._delimiter) + 2 and await self._fill():
            pass
        rest = self._buffer[len(self._delimiter) :]
        if rest.startswith(b"--"):
            self._state = "done"
            return
        while b"\n" not in rest:
            if len(rest) > 1024 or not await self._fill():
                raise MalformedBody("a multipart boundary line is not terminated")
            rest = self._buffer[len(self._delimiter) :]
        line, _, after = rest.partition(b"\n")
        if line.rstrip(b"\r").strip(b" \t"):
            raise MalformedBody("unexpected characters after a multipart boundary")
        self._buffer = after
        self._state = "headers"

    async def _read_headers(self) -> dict[str, str]:
        while True:
            end = _header_end(self._buffer)
            if end is not None:
                block, self._buffer = self._buffer[: end[0]], self._buffer[end[1] :]
                return _parse_headers(block)
            if len(self._buffer) > MAX_HEADER_BYTES:
                raise MalformedBody(f"multipart part headers exceed {MAX_HEADER_BYTES} bytes")
            if not await self._fill():
                raise MalformedBody("the body ended inside a multipart part's headers")

    async def _drain(self) -> None:
        self._buffer = b""
        while await self._fill():
            self._buffer = b""


def _header_end(buffer: bytes) -> tuple[int, int] | None:
    """(end of the header block, start of the body), or None when not complete yet."""
    if buffer.startswith(b"\r\n"):
        return 0, 2
    if buffer.startswith(b"\n"):
        return 0, 1
    limit = MAX_HEADER_BYTES + 4  # never scan a part body looking for its headers' end
    found = [
        (i, i + len(sep))
        for sep in (b"\r\n\r\n", b"\n\n")
        if (i := buffer.find(sep, 0, limit)) >= 0
    ]
    return min(found) if found else None


def _parse_headers(block: bytes) -> dict[str, str]:
    """RFC 5322-style header lines; obsolete line folding is unfolded."""
    headers: dict[str, str] = {}
    name = ""
    for raw in block.decode("latin-1").split("\n"):
        line = raw.removesuffix("\r")
        if not line:
            continue
        if "\r" in line or "\x00" in line:
            raise MalformedBody("a multipart part header holds a control character")
        if line[0] in " \t" and name:
            headers[name] += " " + line.strip()
            continue
        name, colon, value = line.partition(":")
        name = name.strip().lower()
        if not colon or not name:
            raise MalformedBody("a multipart part header line has no name")
        headers[name] = value.strip()
    return headers


# -- writing ---------------------------------------------------------------------------


def new_boundary() -> str:
    """A fresh boundary per body: 32 random hex digits cannot occur in the data."""
    return "dicomweb-proxy-" + secrets.token_hex(16)


def content_type(boundary: str, part_type: str, extra: Sequence[tuple[str, str]] = ()) -> str:
    """``multipart/related; type="..."; boundary=...`` (RFC 2387 section 3.1)."""
    params = "".join(f'; {name}="{value}"' for name, value in extra)
    return f'multipart/related; type="{part_type}"{params}; boundary={boundary}'


def part_head(boundary: str, headers: Sequence[tuple[str, str]]) -> bytes:
    """The delimiter line and the headers that open one part."""
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return f"--{boundary}\r\n{lines}\r\n".encode("latin-1")


PART_END = b"\r\n"


def closing(boundary: str) -> bytes:
    """The close delimiter (RFC 2046 section 5.1.1)."""
    return f"--{boundary}--\r\n".encode("latin-1")
