"""Cache policy: lifetimes and keys from a parsed request (SPEC section 3)."""

from __future__ import annotations

import pytest

from proxy.cache.policy import Lifetime, decide
from proxy.dicomweb.media import normalize_accept, parse_media_type
from proxy.dicomweb.uri import classify

S, SE, SOP = "1.2.3", "1.2.3.4", "1.2.3.4.5"
INSTANCE = f"studies/{S}/series/{SE}/instances/{SOP}"


def policy(
    path: str,
    query: list[tuple[str, str]] | None = None,
    accept: str | None = None,
    qido_ttl: float = 0,
    partition: str = "shared",
):  # type: ignore[no-untyped-def]
    return decide(
        classify(path),
        path=path,
        query=query or [],
        accept=accept,
        partition=partition,
        upstream="http://pacs/dicom-web",
        qido_ttl=qido_ttl,
    )


@pytest.mark.parametrize(
    ("path", "lifetime"),
    [
        (INSTANCE, Lifetime.IMMUTABLE),
        (INSTANCE + "/metadata", Lifetime.IMMUTABLE),
        (INSTANCE + "/frames/1", Lifetime.IMMUTABLE),
        (INSTANCE + "/rendered", Lifetime.IMMUTABLE),
        (f"studies/{S}/metadata", Lifetime.STUDY),
        (f"studies/{S}/series/{SE}", Lifetime.STUDY),
        (f"studies/{S}", Lifetime.STUDY),
    ],
)
def test_lifetimes(path: str, lifetime: Lifetime) -> None:
    found = policy(path)
    assert found is not None and found.lifetime is lifetime


def test_qido_only_with_ttl() -> None:
    assert policy("studies") is None
    found = policy("studies", qido_ttl=30)
    assert found is not None and found.lifetime is Lifetime.QIDO


def test_tags_split_study_level_from_instances() -> None:
    assert policy(INSTANCE).tag == f"i:{S}"  # type: ignore[union-attr]
    assert policy(f"studies/{S}/metadata").tag == f"s:{S}"  # type: ignore[union-attr]


def test_key_ignores_irrelevant_params_and_accept_order() -> None:
    a = policy(INSTANCE, [("foo", "1")], 'multipart/related; type="application/dicom", */*')
    b = policy(INSTANCE, [], "*/*, multipart/related; type=application/dicom; q=0.9")
    assert a is not None and b is not None and a.key == b.key


@pytest.mark.parametrize(
    "change",
    [
        {"accept": "application/dicom"},
        {"query": [("transfer-syntax", "1.2.840.10008.1.2.1")]},
        {"partition": "other"},
    ],
)
def test_key_changes_with_representation(change: dict) -> None:  # type: ignore[type-arg]
    assert policy(INSTANCE).key != policy(INSTANCE, **change).key  # type: ignore[union-attr]


def test_rendered_params_in_key_only_for_rendered() -> None:
    window = [("window", "40,400,linear")]
    assert policy(INSTANCE + "/rendered", window).key != policy(INSTANCE + "/rendered").key  # type: ignore[union-attr]
    assert policy(INSTANCE, window).key == policy(INSTANCE).key  # type: ignore[union-attr]


def test_media_type_parsing() -> None:
    main, params = parse_media_type('Multipart/Related; Type="Application/DICOM"; boundary="a;b"')
    assert main == "multipart/related"
    assert params == {"type": "application/dicom", "boundary": "a;b"}
    assert normalize_accept(None) == "*/*"


def test_empty_media_ranges_do_not_change_the_key() -> None:
    assert normalize_accept("application/dicom,;q=1, ,") == normalize_accept("application/dicom")


def test_accept_splits_ranges_outside_quotes_only() -> None:
    # The unquoted fast path and the quote-aware path give the same key ...
    assert normalize_accept('b/c, a/b; type="x/y"') == normalize_accept("a/b; type=x/y, b/c")
    # ... and a comma inside a quoted parameter does not start a new range.
    assert normalize_accept('a/b; type="x,y"') == "a/b;type=x,y"
