"""Content codings decoded as they stream, and Accept-Encoding read (proxy.dicomweb.coding)."""

from __future__ import annotations

import gzip
import importlib.util
import json
import random
import zlib
from collections.abc import Callable

import pytest

from proxy.dicomweb import coding
from proxy.dicomweb.coding import CodingError, Decoder, decoder_for

SIZES = (1, 7, 100, 4096, 1 << 30)  # bytes per chunk fed; the last one: all at once
TEXT = json.dumps([{"0020000D": {"vr": "UI", "Value": [f"1.2.{n}"]}} for n in range(400)]).encode()
NOISE = random.Random(7).randbytes(3000)
ZEROS = bytes(coding.PIECE + 100)  # more than one step's worth, from a few hundred bytes
PAYLOADS = {"empty": b"", "short": b"hello", "json": TEXT, "noise": NOISE, "zeros": ZEROS}
HAS_BROTLI = importlib.util.find_spec("brotli") is not None
HAS_ZSTD = importlib.util.find_spec("backports") is not None and (
    importlib.util.find_spec("backports.zstd") is not None
)


def raw_deflate(data: bytes) -> bytes:
    """RFC 1951 with no zlib wrapper: what some servers send as "deflate"."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


GZ, ZL, RAW = gzip.compress(TEXT, mtime=0), zlib.compress(TEXT), raw_deflate(TEXT)


def chunks(body: bytes, size: int) -> list[bytes]:
    return [body[start : start + size] for start in range(0, len(body), size)]


def decode(decoder: Decoder, body: bytes, size: int) -> bytes:
    out = b"".join(piece for chunk in chunks(body, size) for piece in decoder.decode(chunk))
    decoder.finish()
    return out


def decoded(content_encoding: str, body: bytes, size: int) -> bytes:
    decoder = decoder_for(content_encoding)
    assert decoder is not None, content_encoding
    return decode(decoder, body, size)


CODERS = [
    pytest.param("gzip", gzip.compress, id="gzip"),
    pytest.param("x-gzip", gzip.compress, id="x-gzip"),
    pytest.param("GZIP", gzip.compress, id="GZIP"),
    pytest.param("deflate", zlib.compress, id="deflate-zlib"),
    pytest.param("deflate", raw_deflate, id="deflate-raw"),
    pytest.param("gzip, identity", gzip.compress, id="gzip,identity"),
    pytest.param("identity, deflate", zlib.compress, id="identity,deflate"),
    pytest.param("deflate, gzip", lambda data: gzip.compress(zlib.compress(data)), id="deflate-zlib,gzip"),
    pytest.param("deflate, gzip", lambda data: gzip.compress(raw_deflate(data)), id="deflate-raw,gzip"),
    pytest.param("gzip, gzip", lambda data: gzip.compress(gzip.compress(data)), id="gzip,gzip"),
]  # fmt: skip


@pytest.mark.parametrize(("content_encoding", "coder"), CODERS)
@pytest.mark.parametrize("name", sorted(PAYLOADS))
@pytest.mark.parametrize("size", SIZES)
def test_decodes_to_the_original_in_chunks_of_any_size(
    content_encoding: str, coder: Callable[[bytes], bytes], name: str, size: int
) -> None:
    data = PAYLOADS[name]
    out = decoded(content_encoding, coder(data), size)
    assert len(out) == len(data)
    assert out == data


@pytest.mark.parametrize("extra", [0, 100, 1000])
def test_raw_deflate_output_still_held_when_the_input_ran_out_is_not_lost(extra: int) -> None:
    """RFC 1951 has no trailer: the last input byte can be taken in while output is still
    owed past the PIECE limit of that step; a complete body must still come out whole."""
    data = bytes(coding.PIECE + extra)
    out = decoded("deflate", raw_deflate(data), 1 << 30)
    assert len(out) == len(data)


@pytest.mark.parametrize("size", SIZES)
def test_gzip_members_concatenated_decode_to_both(size: int) -> None:
    """RFC 1952 section 2.2: a gzip file is a series of members."""
    body = gzip.compress(b"first member|") + gzip.compress(TEXT)
    assert decoded("gzip", body, size) == b"first member|" + TEXT


@pytest.mark.parametrize(
    ("content_encoding", "names", "can", "coded"),
    [(None, [], True, False),
     ("", [], True, False),
     ("identity", [], True, False),
     (" Identity ", [], True, False),
     ("gzip", ["gzip"], True, True),
     ("x-gzip", ["x-gzip"], True, True),
     ("GZip", ["gzip"], True, True),
     ("gzip, identity", ["gzip"], True, True),
     ("deflate, gzip", ["deflate", "gzip"], True, True),
     ("deflate,,gzip", ["deflate", "gzip"], True, True),
     ("compress", ["compress"], False, False),
     ("x-foo", ["x-foo"], False, False),
     ("gzip, x-foo", ["gzip", "x-foo"], False, False),
     ("x-foo, gzip", ["x-foo", "gzip"], False, False)],
)  # fmt: skip
def test_codings_and_what_can_be_decoded(
    content_encoding: str | None, names: list[str], can: bool, coded: bool
) -> None:
    assert coding.codings(content_encoding) == names
    assert coding.can_decode(content_encoding) is can
    assert coding.decodes(content_encoding) is coded
    assert (decoder_for(content_encoding) is not None) is coded


@pytest.mark.parametrize("name", ["br", "zstd"])
@pytest.mark.parametrize("content_encoding", ["{}", "gzip, {}", "{}, gzip"])
def test_br_and_zstd_without_their_library_cannot_be_decoded(
    monkeypatch: pytest.MonkeyPatch, name: str, content_encoding: str
) -> None:
    monkeypatch.setitem(coding.DECODERS, name, None)
    value = content_encoding.format(name)
    assert not coding.can_decode(value)
    assert not coding.decodes(value)
    assert decoder_for(value) is None


def test_optional_decoders_are_there_exactly_when_their_library_is() -> None:
    assert (coding.DECODERS["br"] is not None) is HAS_BROTLI
    assert (coding.DECODERS["zstd"] is not None) is HAS_ZSTD


@pytest.mark.skipif(not HAS_BROTLI, reason="brotli is not installed")
@pytest.mark.parametrize("size", SIZES)
def test_br_decodes_when_installed(size: int) -> None:
    import brotli  # type: ignore[import-not-found, unused-ignore]

    assert decoded("br", brotli.compress(TEXT), size) == TEXT
    assert decoded("br, gzip", gzip.compress(brotli.compress(TEXT)), size) == TEXT


@pytest.mark.skipif(not HAS_ZSTD, reason="backports.zstd is not installed")
@pytest.mark.parametrize("size", SIZES)
def test_zstd_decodes_when_installed(size: int) -> None:
    from backports import zstd  # type: ignore[import-not-found, unused-ignore]

    assert decoded("zstd", zstd.compress(TEXT), size) == TEXT
    assert decoded("zstd, gzip", gzip.compress(zstd.compress(TEXT)), size) == TEXT


@pytest.mark.parametrize(
    ("content_encoding", "coder"),
    [("gzip", gzip.compress),
     ("deflate", zlib.compress),
     ("deflate", raw_deflate)],
)  # fmt: skip
@pytest.mark.parametrize("size", [1 << 30, 1000])
def test_a_zip_bomb_comes_out_in_bounded_pieces(
    content_encoding: str, coder: Callable[[bytes], bytes], size: int
) -> None:
    total = 64 * 1024 * 1024
    body = coder(bytes(total))
    assert len(body) < 128 * 1024
    decoder = decoder_for(content_encoding)
    assert decoder is not None
    count = 0
    for chunk in chunks(body, size):
        for piece in decoder.decode(chunk):
            assert 0 < len(piece) <= coding.PIECE
            assert piece.count(0) == len(piece)
            count += len(piece)
    decoder.finish()
    assert count == total


@pytest.mark.parametrize(
    ("content_encoding", "body"),
    [("gzip", GZ[: len(GZ) // 2]),
     ("gzip", GZ[:-4]),
     ("gzip", GZ[:5]),
     ("gzip", gzip.compress(b"whole") + GZ[:20]),
     ("deflate", ZL[: len(ZL) // 2]),
     ("deflate", ZL[:-1]),
     ("deflate", RAW[: len(RAW) // 2]),
     ("deflate, gzip", gzip.compress(ZL[:-3]))],
)  # fmt: skip
@pytest.mark.parametrize("size", [1, 100, 1 << 30])
def test_a_stream_cut_short_fails_at_finish(content_encoding: str, body: bytes, size: int) -> None:
    decoder = decoder_for(content_encoding)
    assert decoder is not None
    for chunk in chunks(body, size):
        for _ in decoder.decode(chunk):
            pass
    with pytest.raises(CodingError):
        decoder.finish()


def test_a_decoder_fed_nothing_has_nothing_to_finish() -> None:
    decoder = decoder_for("gzip")
    assert decoder is not None
    assert list(decoder.decode(b"")) == []
    decoder.finish()


@pytest.mark.parametrize(
    ("content_encoding", "body"),
    [("gzip", b"this is not gzip at all"),
     ("gzip", b"\x1f\x8b\x08\x00" + b"\xff" * 40),
     ("gzip", GZ[:30] + b"\xff" * 64 + GZ[94:]),
     ("gzip", GZ + b"trailing junk"),
     ("x-gzip", b"PK\x03\x04 a zip file, not gzip"),
     ("deflate", b"\x78\x9c" + b"\xff" * 40),
     ("deflate", b"\xff" * 40),
     ("deflate", ZL[:-4] + b"\x00\x00\x00\x00"),
     ("deflate", ZL + b"x"),
     ("deflate", ZL + ZL),
     ("deflate", RAW + b"more"),
     ("deflate, gzip", gzip.compress(b"not deflate inside"))],
)  # fmt: skip
@pytest.mark.parametrize("size", [1, 100, 1 << 30])
def test_corrupt_bodies_fail_while_decoding(content_encoding: str, body: bytes, size: int) -> None:
    decoder = decoder_for(content_encoding)
    assert decoder is not None
    with pytest.raises(CodingError):
        for chunk in chunks(body, size):
            for _ in decoder.decode(chunk):
                pass


@pytest.mark.parametrize(
    ("accept_encoding", "expected"),
    [(None, False),
     ("", False),
     ("gzip", True),
     ("gzip, deflate", True),
     ("gzip, deflate, br, zstd", True),
     ("identity", False),
     ("gzip;q=0", False),
     ("gzip; q=0.0", False),
     ("*", True),
     ("*;q=0", False),
     ("gzip;q=0, *", False),
     ("*, gzip;q=0", False),
     ("gzip, *;q=0", True),
     ("x-gzip", True),
     ("GZIP", True),
     ("br", False),
     ("deflate, br", False),
     ("gzip;q=0.5", True),
     ("gzip;q=0.001", True),
     ("gzip;q=bogus", False),
     ("br;q=1.0, gzip;q=0.8, *;q=0.1", True),
     (" gzip ; q=1 ", True)],
)  # fmt: skip
def test_accepts_gzip(accept_encoding: str | None, expected: bool) -> None:
    """RFC 9110 section 12.5.3: listed or covered by ``*``, with a non-zero weight."""
    assert coding.accepts_gzip(accept_encoding) is expected


@pytest.mark.parametrize(("textual", "expected"), [(True, "gzip"), (False, "identity")])
def test_upstream_accept_encoding(textual: bool, expected: str) -> None:
    assert coding.upstream_accept_encoding(textual) == expected
