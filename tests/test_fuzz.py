"""Property-based fuzzing of the pure parsers (hypothesis).

Each parser meets arbitrary input and may only answer with its documented error type:
``InvalidPath`` for paths, ``MalformedBody`` for multipart bodies, ``None`` for an
unreadable STOW response; never an unhandled exception.  Where a writer exists the
round trip is checked (multipart writer -> reader, streaming rewrite == whole rewrite,
merged STOW response -> parsed back).  Seeded corpora hold real-world quirks.

Example counts are bounded and deadlines off so CI stays fast and deterministic.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from proxy.dicomweb import media, multipart, stow_encoding, stow_response
from proxy.dicomweb.rewrite import Rewriter, carries_urls
from proxy.dicomweb.stow_response import (
    BatchReport,
    Failed,
    Referenced,
    Sop,
    StowResponse,
    StowResult,
)
from proxy.dicomweb.uri import InvalidPath, Level, Transaction, check_path, classify
from proxy.errors import MalformedBody
from proxy.stow.parts import Kind
from proxy.stow.spool import kind_of
from tests.support import read_multipart

FAST = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)

# -- URI --------------------------------------------------------------------------------

SEGMENTS = st.sampled_from(
    [
        "studies", "series", "instances", "metadata", "frames", "1,2", "rendered", "thumbnail",
        "bulkdata", "pixeldata", "1.2.3", "0", "01.2", "..", ".", "%2e%2e", "%2E.", "%2f",
        "%5c", "%00", "\\", "", "a b", "1." * 33 + "1", "\r\n", "%0d%0a", "é", "%", "%%32e",
    ]
)  # fmt: skip
PATHS = st.one_of(
    st.lists(SEGMENTS, max_size=8).map("/".join),
    st.text(max_size=80),
)


@FAST
@given(path=PATHS, method=st.sampled_from(["GET", "POST", "DELETE", "HEAD", "OPTIONS"]))
@example(path="studies/1.2/series/3.4/instances/5.6/frames/1", method="GET")
@example(path="studies/1.2/series", method="GET")
@example(path="studies//1.2", method="POST")
@example(path="studies/1.2/series/3.4/instances", method="POST")
def test_classify_answers_a_resource_or_invalid_path(path: str, method: str) -> None:
    try:
        check_path(path)
        resource = classify(path, method)
    except InvalidPath:
        return
    for uid in (resource.study, resource.series, resource.instance):
        assert uid is None or (len(uid) <= 64 and uid.replace(".", "").isdigit())
    if resource.instance is not None:
        assert resource.level is Level.INSTANCE and resource.series and resource.study
    if resource.transaction is Transaction.STOW:
        assert method == "POST"


@FAST
@given(path=PATHS)
def test_no_path_that_passes_check_path_climbs_out(path: str) -> None:
    """Whatever encoding: a path that check_path lets through has no dot segment once
    decoded, no encoded slash or backslash and no control character."""
    from urllib.parse import unquote

    try:
        check_path(path)
    except InvalidPath:
        return
    once = unquote(path)
    assert ".." not in once.split("/") and "\\" not in once
    assert not any(ord(char) < 0x20 or char == "\x7f" for char in once)
    assert "/" not in "".join(unquote(segment) for segment in path.split("/"))


# -- media types --------------------------------------------------------------------------

HEADER_TEXT = st.text(
    alphabet=st.sampled_from([*list('abcdeFGH/+;=," *\\\t-.0123456789'), "\x00", "é"]),
    max_size=60,
)


@FAST
@given(value=st.one_of(HEADER_TEXT, st.text(max_size=60)))
@example(value='multipart/related; type="application/dicom"; boundary="a;b"')
@example(value='application/dicom+json;q=0.5, multipart/related; type="application/dicom"')
@example(value='"')
def test_media_type_parsing_never_raises(value: str) -> None:
    main, _params = media.parse_media_type(value)
    assert main == main.strip().lower()
    accept = media.normalize_accept(value)
    assert accept == media.normalize_accept(accept) or '"' in value
    assert isinstance(carries_urls(value), bool)


@FAST
@given(value=st.one_of(HEADER_TEXT, st.text(max_size=80)))
@example(value="multipart/related; boundary=" + "x" * 201)
def test_boundary_of_is_valid_or_malformed(value: str) -> None:
    try:
        boundary = multipart.boundary_of(media.parse_media_type(value))
    except MalformedBody:
        return
    assert 1 <= len(boundary) <= multipart.MAX_BOUNDARY and not boundary.endswith(" ")


# -- multipart ----------------------------------------------------------------------------


def read_parts(data: bytes, boundary: str, sizes: list[int]) -> list[tuple[dict[str, str], bytes]]:
    return asyncio.run(read_multipart(data, boundary, sizes))


CHUNKINGS = st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=5)
HEADER_NAMES = st.sampled_from(["Content-Type", "Content-Location", "X-Thing", "content-id"])
HEADER_VALUES = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=40,
).map(str.strip)
PART_HEADERS = st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=3)


@FAST
@given(
    parts=st.lists(st.tuples(PART_HEADERS, st.binary(max_size=400)), max_size=5),
    sizes=CHUNKINGS,
    preamble=st.binary(max_size=30).filter(lambda b: b"--" not in b),
    epilogue=st.binary(max_size=30),
)
def test_multipart_writer_then_reader_round_trip(
    parts: list[tuple[dict[str, str], bytes]], sizes: list[int], preamble: bytes, epilogue: bytes
) -> None:
    boundary = multipart.new_boundary()
    body = preamble + b"\r\n" if preamble else b""
    for headers, data in parts:
        body += multipart.part_head(boundary, list(headers.items())) + data + multipart.PART_END
    body += multipart.closing(boundary) + epilogue
    got = read_parts(body, boundary, sizes)
    assert [data for _, data in got] == [data for _, data in parts]
    expected = [{k.lower(): v for k, v in headers.items()} for headers, _ in parts]
    assert [headers for headers, _ in got] == expected


QUIRKS = [
    # LF-only line ends
    b"--b\nContent-Type: application/dicom\n\nDATA\n--b--\n",
    # preamble and epilogue
    b"preamble text\r\n--b\r\n\r\nDATA\r\n--b--\r\nepilogue",
    # empty parts
    b"--b\r\n\r\n\r\n--b\r\n\r\n\r\n--b--",
    # padding after the delimiter
    b"--b  \t\r\nX: 1\r\n\r\nDATA\r\n--b--",
    # folded header
    b"--b\r\nX: a\r\n  b\r\n\r\nDATA\r\n--b--",
    # a huge header block
    b"--b\r\nX: " + b"h" * 20000 + b"\r\n\r\nDATA\r\n--b--",
    # no closing delimiter
    b"--b\r\n\r\nDATA",
    # no delimiter at all
    b"just bytes",
    # junk after the delimiter
    b"--bjunk\r\n\r\nDATA\r\n--b--",
    # header line without a name
    b"--b\r\n: x\r\n\r\nDATA\r\n--b--",
    # CR inside a header
    b"--b\r\nX: a\rb\r\n\r\nDATA\r\n--b--",
    # unterminated boundary line
    b"--b" + b" " * 2000,
    b"",
]


@FAST
@given(
    body=st.one_of(
        st.sampled_from(QUIRKS),
        st.binary(max_size=300),
        st.lists(
            st.sampled_from([b"--b", b"--b--", b"\r\n", b"\n", b"X: y", b"DATA", b"\r", b" "]),
            max_size=20,
        ).map(b"".join),
    ),
    sizes=CHUNKINGS,
)
def test_multipart_reader_answers_parts_or_malformed_body(body: bytes, sizes: list[int]) -> None:
    """Any bytes, any chunking: parts, or MalformedBody; and the chunking never changes
    the answer."""

    def outcome(chunking: list[int]) -> object:
        try:
            return read_parts(body, "b", chunking)
        except MalformedBody:
            return MalformedBody

    assert outcome(sizes) == outcome([len(body) or 1])


def test_multipart_quirks_read_as_expected() -> None:
    assert read_parts(QUIRKS[0], "b", [3]) == [({"content-type": "application/dicom"}, b"DATA")]
    assert read_parts(QUIRKS[1], "b", [5]) == [({}, b"DATA")]
    assert read_parts(QUIRKS[2], "b", [1]) == [({}, b""), ({}, b"")]
    assert read_parts(QUIRKS[4], "b", [2]) == [({"x": "a b"}, b"DATA")]


# -- URL rewriting ----------------------------------------------------------------------

UPSTREAM = "http://pacs.internal:8042/dicom-web"
PUBLIC = "https://proxy.example/dicom-web"
URLISH = st.lists(
    st.sampled_from(
        [
            UPSTREAM, UPSTREAM + "/studies/1.2", "http://lb-7:80/dicom-web/studies/1",
            "http://x/dicom-webX", '"', "&quot;", " ", "\n", "/", "http://", "dicom-web",
            '{"00081190": {"vr": "UR", "Value": ["', '"]}}', "<BulkData uri=\"", "é",
        ]
    ),
    max_size=30,
).map(lambda items: "".join(items).encode())  # fmt: skip


@FAST
@given(body=st.one_of(URLISH, st.binary(max_size=400)), sizes=CHUNKINGS)
def test_streaming_rewrite_equals_whole_rewrite(body: bytes, sizes: list[int]) -> None:
    rewriter = Rewriter(UPSTREAM, PUBLIC)
    out = _streamed(rewriter, body, sizes)
    assert out == rewriter.rewrite_bytes(body)
    assert UPSTREAM.encode() + b"/" not in out


@FAST
@given(body=URLISH.map(lambda piece: piece * 40), sizes=st.lists(st.integers(1, 3000), min_size=1))
def test_streaming_rewrite_of_long_bodies_equals_whole_rewrite(
    body: bytes, sizes: list[int]
) -> None:
    """Bodies longer than the look-behind window, so chunks are cut after quotes."""
    rewriter = Rewriter(UPSTREAM, PUBLIC)
    assert _streamed(rewriter, body, sizes) == rewriter.rewrite_bytes(body)


def _streamed(rewriter: Rewriter, body: bytes, sizes: list[int]) -> bytes:
    """``body`` through a StreamRewriter in chunks of ``sizes``, cycled."""
    stream = rewriter.stream()
    out, start, index = b"", 0, 0
    while start < len(body):
        size = sizes[index % len(sizes)]
        out += stream.feed(body[start : start + size])
        start, index = start + size, index + 1
    return out + stream.flush()


@FAST
@given(value=st.text(max_size=120))
def test_header_rewrite_never_raises(value: str) -> None:
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return  # aiohttp hands header values over as latin-1 text
    Rewriter(UPSTREAM, PUBLIC).rewrite_header(value)


# -- STOW responses -----------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8)
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(
            st.sampled_from(["00081199", "00081198", "Value", "vr", "00081155", "00081197"]),
            children,
            max_size=4,
        ),
    ),
    max_leaves=20,
)


@FAST
@given(document=JSON_VALUES)
@example(document={"00081199": {"vr": "SQ", "Value": [{"00081155": {"Value": [1.5]}}]}})
@example(document={"00081198": {"Value": [{"00081197": {"Value": ["A700"]}}]}})
def test_stow_json_response_parses_or_is_none(document: object) -> None:
    parsed = stow_encoding.parse(json.dumps(document).encode(), "application/dicom+json")
    assert parsed is None or isinstance(parsed, StowResult)


@FAST
@given(body=st.binary(max_size=300), xml=st.booleans())
@example(body=b"[" * 100_000, xml=False)
@example(body=b'{"00081199": ' * 50_000, xml=False)
@example(body=b"<a>" * 50_000, xml=True)
@example(
    body=b'<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
    b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;">'
    b"]><NativeDicomModel>&d;&d;&d;&d;&d;&d;&d;</NativeDicomModel>",
    xml=True,
)
def test_stow_response_bytes_parse_or_are_none(body: bytes, xml: bool) -> None:
    """Upstream bodies are untrusted: deep nesting or entity bombs give None, not a crash."""
    content_type = "application/dicom+xml" if xml else "application/dicom+json"
    parsed = stow_encoding.parse(body, content_type)
    assert parsed is None or isinstance(parsed, StowResult)


UIDS = st.from_regex(r"\A[1-9][0-9]{0,3}(\.[0-9]{1,4}){1,4}\Z")
CODES = st.sampled_from([0x0110, 0x0122, 0x0124, 0xA700, 0xA900, 0xC000, 0xB000, 0xB007])
REFERENCED = st.builds(
    Referenced, UIDS, UIDS, st.none() | st.just("http://p/dicom-web/x"), st.none() | CODES
)
FAILED = st.builds(Failed, UIDS, UIDS, CODES)
STATUSES = st.sampled_from([None, 200, 202, 400, 409, 413, 500, 503])


@st.composite
def reports(draw: st.DrawFn) -> list[BatchReport]:
    out = []
    for _ in range(draw(st.integers(0, 4))):
        sent = draw(
            st.lists(st.builds(Sop, UIDS, UIDS), max_size=4, unique_by=lambda s: s.sop_instance)
        )
        answer = draw(
            st.none()
            | st.builds(
                StowResult,
                st.lists(REFERENCED, max_size=3).map(tuple),
                st.lists(FAILED, max_size=3).map(tuple),
            )
        )
        out.append(stow_response.resolve(draw(STATUSES), answer, sent))
    return out


@FAST
@given(batches=reports(), rejected=st.lists(FAILED, max_size=3), xml=st.booleans())
def test_merge_keeps_every_item_and_round_trips(
    batches: list[BatchReport], rejected: list[Failed], xml: bool
) -> None:
    merged = stow_response.merge(batches, rejected, study_of={}, base_url="http://p/dicom-web")
    referenced = [i for b in batches for i in b.result.referenced]
    failed = list(rejected) + [i for b in batches for i in b.result.failed]
    assert list(merged.result.referenced) == referenced
    assert list(merged.result.failed) == failed
    if not referenced:
        assert merged.status in (400, 409)
    else:
        assert merged.status == (200 if merged.status == 200 else 202)
        assert merged.status == 202 or not failed
    encoded = stow_encoding.to_xml(merged) if xml else stow_encoding.to_json(merged)
    parsed = stow_encoding.parse(encoded, "application/dicom+xml" if xml else "application/json")
    assert parsed is not None
    assert [(i.sop_instance, i.warning) for i in parsed.referenced] == [
        (i.sop_instance, i.warning) for i in referenced
    ]
    assert [(i.sop_instance, i.reason) for i in parsed.failed] == [
        (i.sop_instance, i.reason) for i in failed
    ]


def test_merge_status_table() -> None:
    """PS3.18 Annex I: 200 all stored, 202 partial, 409 none, 400 when every batch said so."""
    ok = StowResult((Referenced("1.2", "1.3"),))
    bad = StowResult((), (Failed("1.2", "1.4", 0xC000),))
    stored, lost = BatchReport(200, ok), BatchReport(409, bad)
    assert stow_response.merge([stored], [], study_of={}, base_url="").status == 200
    assert stow_response.merge([stored, lost], [], study_of={}, base_url="").status == 202
    assert stow_response.merge([lost], [], study_of={}, base_url="").status == 409
    assert stow_response.merge([BatchReport(400, bad)], [], study_of={}, base_url="").status == 400
    assert isinstance(StowResponse(200, ok, ""), StowResponse)


@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/related; type=application/dicom; boundary=abc",
        'multipart/related; type="application/dicom"; boundary="abc"',
        'multipart/related;boundary=abc;type="application/dicom"',
        'Multipart/Related; BOUNDARY="abc"; Type=Application/DICOM',
        'multipart/related; type="application/dicom"; boundary="abc"; start="<1@x>"',
        "multipart/related; boundary = abc ; type = application/dicom",
    ],
)
def test_quoted_and_unquoted_boundaries_and_types(content_type: str) -> None:
    """Real clients write these parameters every way RFC 9110 5.6.6 allows (and some it
    does not: spaces around "=")."""
    parsed = media.parse_media_type(content_type)
    assert multipart.boundary_of(parsed) == "abc"
    assert kind_of(parsed) is Kind.DICOM
    body = b"--abc\r\nContent-Type: application/dicom\r\n\r\nDATA\r\n--abc--"
    assert read_parts(body, multipart.boundary_of(parsed), [4]) == [
        ({"content-type": "application/dicom"}, b"DATA")
    ]
