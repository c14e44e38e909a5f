"""Content codings (RFC 9110 sections 8.4 and 12.5.3), the proxy's business on each side.

- Towards the upstream the proxy asks for what it wants (:func:`upstream_accept_encoding`):
  gzip for JSON and XML answers, identity for bulk data, never the client's choice.
- Whatever coding arrives anyway is decoded as it streams (:func:`decoder_for`), with
  bounded output per step, so that rewriting, completeness checks and storage see the
  representation itself.  gzip and deflate always; br and zstd when their library is
  installed.  Any other coding cannot be decoded: such a body is relayed as it came.
- Towards the client, :func:`accepts_gzip` reads its ``Accept-Encoding``.

Pure: no server imports.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable, Iterator
from typing import Any

from proxy.dicomweb.media import parse_accept, quality

# Most bytes one decoding step hands out: a small compressed chunk may expand a
# thousandfold (a "zip bomb"), and memory must stay bounded.
PIECE = 256 * 1024
GZIP_TEXT = "gzip"
IDENTITY = "identity"


class CodingError(ValueError):
    """The body is not valid in its declared coding, or its coded stream was cut short."""


class Decoder:
    """Feed coded chunks with :meth:`decode`; :meth:`finish` checks the stream ended."""

    def decode(self, data: bytes) -> Iterator[bytes]:
        raise NotImplementedError

    def finish(self) -> None:
        raise NotImplementedError


class _Zlib(Decoder):
    """gzip (RFC 1952, members concatenated) and deflate (RFC 1950; raw RFC 1951 too,
    as some servers send it).  The stream's own end marks a complete body."""

    def __init__(self, gzip: bool) -> None:
        self._gzip = gzip
        self._inflate: Any = None
        self._ended = False

    def _start(self, first: int) -> Any:
        if self._gzip:
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        raw = first & 0x0F != 8  # RFC 1950: CM = 8 in the first byte's low bits
        return zlib.decompressobj(-zlib.MAX_WBITS if raw else zlib.MAX_WBITS)

    def decode(self, data: bytes) -> Iterator[bytes]:
        try:
            while data:
                if self._inflate is None or (self._inflate.eof and self._gzip):
                    self._inflate, self._ended = self._start(data[0]), False
                elif self._inflate.eof:
                    raise CodingError("data after the end of the deflate stream")
                yield from self._inflate_all(data)
                self._ended = self._inflate.eof
                data = self._inflate.unused_data
        except zlib.error as exc:
            raise CodingError(f"invalid {'gzip' if self._gzip else 'deflate'} data") from exc

    def _inflate_all(self, data: bytes) -> Iterator[bytes]:
        """Every byte ``data`` holds, PIECE at a time.  zlib may owe output after it
        took the last input byte (raw deflate has no trailer to keep it waiting), so
        it is asked again while a step came back full."""
        piece = self._inflate.decompress(data, PIECE)
        while piece:
            yield piece
            if len(piece) < PIECE and not self._inflate.unconsumed_tail:
                return
            piece = self._inflate.decompress(self._inflate.unconsumed_tail, PIECE)

    def finish(self) -> None:
        if self._inflate is not None and not self._ended:
            raise CodingError("the coded body ended before its compressed stream did")


def _optional(factory: Callable[[], Callable[[], Decoder]]) -> Callable[[], Decoder] | None:
    try:
        return factory()
    except ImportError:
        return None


def _brotli() -> Callable[[], Decoder]:
    import brotli

    if not hasattr(brotli.Decompressor(), "can_accept_more_data"):
        raise ImportError("Brotli 1.2 or later bounds its output")

    class _Brotli(Decoder):
        def __init__(self) -> None:
            self._state = brotli.Decompressor()

        def decode(self, data: bytes) -> Iterator[bytes]:
            try:
                # The limit is a hint (a step may return more), and output may still
                # be owed once more input would be accepted: drain until none comes.
                piece = self._state.process(data, output_buffer_limit=PIECE)
                while piece:
                    yield piece
                    if self._state.is_finished():
                        return
                    piece = self._state.process(b"", output_buffer_limit=PIECE)
            except brotli.error as exc:
                raise CodingError("invalid br data") from exc

        def finish(self) -> None:
            if not self._state.is_finished():
                raise CodingError("the br body ended before its compressed stream did")

    return _Brotli


def _zstd() -> Callable[[], Decoder]:
    try:
        from compression import zstd  # type: ignore[import-not-found, unused-ignore]
    except ImportError:  # Python before 3.14
        from backports import zstd  # type: ignore[import-not-found, unused-ignore, no-redef]

    class _Zstd(Decoder):
        """RFC 8878: frames may follow one another; each one's end is checked."""

        def __init__(self) -> None:
            self._state = zstd.ZstdDecompressor()
            self._started = False

        def decode(self, data: bytes) -> Iterator[bytes]:
            try:
                while data:
                    if self._state.eof:
                        self._state = zstd.ZstdDecompressor()
                    self._started = True
                    yield from self._frame(data)
                    data = self._state.unused_data if self._state.eof else b""
            except (zstd.ZstdError, EOFError) as exc:
                raise CodingError("invalid zstd data") from exc

        def _frame(self, data: bytes) -> Iterator[bytes]:
            piece = self._state.decompress(data, PIECE)
            while True:
                if piece:
                    yield piece
                if self._state.eof or self._state.needs_input:
                    return
                piece = self._state.decompress(b"", PIECE)

        def finish(self) -> None:
            if self._started and not self._state.eof:
                raise CodingError("the zstd body ended before its compressed stream did")

    return _Zstd


DECODERS: dict[str, Callable[[], Decoder] | None] = {
    "gzip": lambda: _Zlib(gzip=True),
    "x-gzip": lambda: _Zlib(gzip=True),  # RFC 9110 section 8.4.1.3
    "deflate": lambda: _Zlib(gzip=False),
    "br": _optional(_brotli),
    "zstd": _optional(_zstd),
}


def codings(content_encoding: str | None) -> list[str]:
    """The codings applied, in order, ``identity`` left out (RFC 9110 section 8.4)."""
    if not content_encoding:
        return []
    found = [item.strip().lower() for item in content_encoding.split(",")]
    return [name for name in found if name and name != IDENTITY]


def can_decode(content_encoding: str | None) -> bool:
    return all(DECODERS.get(name) is not None for name in codings(content_encoding))


def decodes(content_encoding: str | None) -> bool:
    """True when a body in these codings is coded and will be decoded on the way."""
    return bool(codings(content_encoding)) and can_decode(content_encoding)


class _Chain(Decoder):
    """Codings applied one after the other are removed last one first."""

    def __init__(self, decoders: list[Decoder]) -> None:
        self._decoders = decoders

    def decode(self, data: bytes) -> Iterator[bytes]:
        return self._through(data, 0)

    def _through(self, data: bytes, index: int) -> Iterator[bytes]:
        if index == len(self._decoders):
            yield data
            return
        for piece in self._decoders[index].decode(data):
            yield from self._through(piece, index + 1)

    def finish(self) -> None:
        for decoder in self._decoders:
            decoder.finish()


def decoder_for(content_encoding: str | None) -> Decoder | None:
    """A decoder for a body in these codings; None when it is not coded at all or
    cannot be decoded here (see :func:`can_decode`)."""
    if not decodes(content_encoding):
        return None
    names = codings(content_encoding)
    made = [DECODERS[name]() for name in reversed(names)]  # type: ignore[misc]
    return made[0] if len(made) == 1 else _Chain(made)


def upstream_accept_encoding(textual: bool) -> str:
    """What the proxy asks the upstream for: gzip pays for JSON and XML over a WAN;
    bulk data (pixel data, mostly compressed or noise already) goes as it is."""
    return GZIP_TEXT if textual else IDENTITY


@functools.lru_cache(maxsize=256)
def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether the client accepts gzip (RFC 9110 section 12.5.3): listed, or covered by
    ``*``, with a non-zero ``q``.  Remembered: clients send few distinct values."""
    if not accept_encoding:
        return False
    weights = {item.main: quality(item) for item in parse_accept(accept_encoding)}
    for name in ("gzip", "x-gzip", "*"):
        if name in weights:
            return weights[name] > 0
    return False
