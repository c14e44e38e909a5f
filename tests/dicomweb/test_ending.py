"""Close-delimited bodies: does what arrived look whole? (proxy.dicomweb.ending)"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.dicomweb.ending import end_check, multipart_end

JSON = "application/dicom+json"
DOCUMENTS = st.recursive(
    st.one_of(st.none(), st.integers(), st.text(alphabet='ab"\\[]{}é ', max_size=6)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=12,
).filter(lambda value: isinstance(value, (list, dict)))


def whole(content_type: str, body: bytes, size: int, encoding: str = "identity") -> bool:
    check = end_check({"Content-Type": content_type, "Content-Encoding": encoding})
    for start in range(0, len(body), size):
        check.feed(body[start : start + size])
    return check.whole()


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(document=DOCUMENTS, size=st.integers(1, 16))
def test_json_whole_only_when_every_bracket_closed(document: object, size: int) -> None:
    body = json.dumps(document, ensure_ascii=False).encode()
    assert whole(JSON, body, size)
    for cut in range(1, len(body)):
        assert not whole(JSON, body[:cut], size), body[:cut]


def test_multipart_whole_once_the_close_delimiter_arrived() -> None:
    content_type = 'multipart/related; type="application/dicom"; boundary=xyz'
    body = b"--xyz\r\n\r\nDATA\r\n--xyz--\r\n"
    assert whole(content_type, body, 3)
    assert not whole(content_type, body[:-8], 3)


def test_empty_bodies_and_other_types_are_taken_as_they_came() -> None:
    assert whole(JSON, b"", 1)
    assert whole("application/octet-stream", b"\x00" * 10, 3)
    assert whole("image/jpeg", b"", 1)


def test_encoded_bodies_are_not_judged() -> None:
    """A gzip body is relayed as it came: its bytes are no JSON to count brackets in."""
    assert whole(JSON, b"\x1f\x8b[[[{", 2, encoding="gzip")
    assert not whole(JSON, b"[[[{", 2)


def test_the_close_delimiter_rule_is_one_for_every_framing() -> None:
    """multipart_end (cache fills, any framing) and end_check (close-delimited bodies)
    judge a multipart body alike: by its close delimiter, unless it is still coded."""
    content_type = "multipart/related; boundary=xyz"
    plain = {"Content-Type": content_type}
    check = multipart_end(plain)
    assert check is not None
    check.feed(b"--xyz\r\n\r\nDATA\r\n--xy")
    assert not check.whole()
    check.feed(b"z--\r\n")
    assert check.whole()
    assert multipart_end({**plain, "Content-Encoding": "br"}) is None
    assert multipart_end({"Content-Type": JSON}) is None
    assert multipart_end({"Content-Type": "multipart/related"}) is None  # no boundary
