"""Does a body that ended without HTTP framing look whole?

A close-delimited response (RFC 9112 section 6.3, rule 8: no ``Content-Length``, not
chunked) ends when the connection closes, so a connection that drops early looks like
a complete body.  Relayed to a client with proper framing, such a body would be
presented as complete.  What can be checked is checked here, as the bytes stream by:

- ``multipart/*``: the close delimiter ``--boundary--`` arrived (RFC 2046 5.1.1);
- JSON (DICOM JSON, PS3.18 Annex F, is always an array or object): every bracket opened
  outside a string was closed, so the document is not a proper prefix of itself.

Other media types cannot be judged and are taken as they came.  A coded (compressed)
body is judged after decoding; one in a coding the proxy cannot decode is not judged.

Pure: no server imports.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from proxy.dicomweb.media import parse_media_type

_OUTSIDE = re.compile(rb'[\[\]{}"]')
_STRING_BODY = re.compile(rb'(?:[^"\\]|\\.)*', re.DOTALL)


class EndCheck:
    """Feed every chunk; :meth:`whole` then says whether the body looks complete."""

    def feed(self, chunk: bytes) -> None:
        raise NotImplementedError

    def whole(self) -> bool:
        raise NotImplementedError


class _Unchecked(EndCheck):
    def feed(self, chunk: bytes) -> None:
        pass

    def whole(self) -> bool:
        return True


class _MultipartEnd(EndCheck):
    def __init__(self, boundary: str) -> None:
        self._close = f"--{boundary}--".encode("latin-1")
        self._tail = b""

    def feed(self, chunk: bytes) -> None:
        self._tail = (self._tail + chunk)[-(len(self._close) + 256) :]

    def whole(self) -> bool:
        return self._close in self._tail


class _JsonEnd(EndCheck):
    """Bracket depth outside strings; a string split across chunks carries over."""

    def __init__(self) -> None:
        self._depth = 0
        self._in_string = False
        self._carry = b""  # a backslash that ended a chunk inside a string
        self._seen = 0

    def feed(self, chunk: bytes) -> None:
        data, self._carry = self._carry + chunk, b""
        self._seen += len(chunk)
        position = 0
        while position < len(data):
            if self._in_string:
                body = _STRING_BODY.match(data, position)  # matches, if only emptily
                end = body.end() if body else position
                if end < len(data) and data[end] == ord('"'):
                    self._in_string, position = False, end + 1
                else:
                    self._carry, position = data[end:], len(data)
                continue
            found = _OUTSIDE.search(data, position)
            if found is None:
                return
            self._step(data[found.start()])
            position = found.end()

    def _step(self, char: int) -> None:
        if char == ord('"'):
            self._in_string = True
        elif char in b"[{":
            self._depth += 1
        else:
            self._depth -= 1

    def whole(self) -> bool:
        if self._seen == 0:
            return True  # nothing claimed, nothing cut
        return self._depth == 0 and not self._in_string


def end_check(headers: Mapping[str, str]) -> EndCheck:
    """The check for a close-delimited body described by these headers (those of the
    decoded body, :func:`proxy.upstream.body_headers`).  A body still coded is one the
    proxy could not decode: it passes on as it came, unjudged."""
    media = _judged(headers)
    if media is None:
        return _Unchecked()
    multipart = _multipart_end(*media)
    if multipart is not None:
        return multipart
    return _JsonEnd() if media[0].endswith("json") else _Unchecked()


def multipart_end(headers: Mapping[str, str]) -> EndCheck | None:
    """The check that a multipart body ended with its close delimiter, whatever its
    framing (a cache fill stores no multipart body without one); None for a body that
    is not multipart, or still coded (not judged, as in :func:`end_check`)."""
    media = _judged(headers)
    return None if media is None else _multipart_end(*media)


def _judged(headers: Mapping[str, str]) -> tuple[str, dict[str, str]] | None:
    """The media type of a body that can be judged: None while it is still coded."""
    if headers.get("Content-Encoding", "identity").lower() != "identity":
        return None
    return parse_media_type(headers.get("Content-Type", ""))


def _multipart_end(main: str, params: Mapping[str, str]) -> EndCheck | None:
    if main.startswith("multipart/") and params.get("boundary"):
        return _MultipartEnd(params["boundary"])
    return None
