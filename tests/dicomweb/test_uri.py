"""Request path classification (PS3.18 10.4-10.6 resource tables)."""

from __future__ import annotations

import pytest

from proxy.dicomweb.uri import InvalidPath, Level, Transaction, check_path, classify

S, SE, SOP = "1.2.3", "1.2.3.4", "1.2.3.4.5"


@pytest.mark.parametrize(
    ("path", "method", "transaction", "level", "instance"),
    [
        ("studies", "GET", Transaction.QIDO, Level.NONE, None),
        ("series", "GET", Transaction.QIDO, Level.NONE, None),
        ("instances", "GET", Transaction.QIDO, Level.NONE, None),
        (f"studies/{S}/series", "GET", Transaction.QIDO, Level.NONE, None),
        (f"studies/{S}/instances", "GET", Transaction.QIDO, Level.NONE, None),
        (f"studies/{S}/series/{SE}/instances", "GET", Transaction.QIDO, Level.NONE, None),
        (f"studies/{S}", "GET", Transaction.WADO, Level.STUDY, None),
        (f"studies/{S}/metadata", "GET", Transaction.WADO_METADATA, Level.STUDY, None),
        (f"studies/{S}/rendered", "GET", Transaction.WADO_RENDERED, Level.STUDY, None),
        (f"studies/{S}/series/{SE}", "GET", Transaction.WADO, Level.SERIES, None),
        (f"studies/{S}/series/{SE}/metadata", "GET", Transaction.WADO_METADATA, Level.SERIES, None),
        (
            f"studies/{S}/series/{SE}/thumbnail",
            "GET",
            Transaction.WADO_RENDERED,
            Level.SERIES,
            None,
        ),
        (f"studies/{S}/series/{SE}/instances/{SOP}", "GET", Transaction.WADO, Level.INSTANCE, SOP),
        (
            f"studies/{S}/series/{SE}/instances/{SOP}/frames/1,2",
            "GET",
            Transaction.WADO,
            Level.INSTANCE,
            SOP,
        ),
        (
            f"studies/{S}/series/{SE}/instances/{SOP}/frames/1/rendered",
            "GET",
            Transaction.WADO_RENDERED,
            Level.INSTANCE,
            SOP,
        ),
        (
            f"studies/{S}/series/{SE}/instances/{SOP}/bulk/7FE00010",
            "GET",
            Transaction.WADO,
            Level.INSTANCE,
            SOP,
        ),
        (
            f"studies/{S}/series/{SE}/instances/{SOP}/metadata",
            "GET",
            Transaction.WADO_METADATA,
            Level.INSTANCE,
            SOP,
        ),
        ("studies", "POST", Transaction.STOW, Level.NONE, None),
        (f"studies/{S}", "POST", Transaction.STOW, Level.STUDY, None),
        ("", "GET", Transaction.OTHER, Level.NONE, None),
        ("servers", "GET", Transaction.OTHER, Level.NONE, None),
    ],
)
def test_classify(
    path: str, method: str, transaction: Transaction, level: Level, instance: str | None
) -> None:
    resource = classify(path, method)
    assert resource.transaction is transaction
    assert resource.level is level
    assert resource.instance == instance
    assert resource.is_instance_addressed is (instance is not None)


@pytest.mark.parametrize(
    "path",
    [
        "studies/abc",
        "studies/1.2/series/x",
        f"studies/{S}/series/{SE}/instances/1..2",
        "studies/01.2",
        "studies/" + "1" * 65,
        "series/1.2",
    ],
)
def test_malformed_uids(path: str) -> None:
    with pytest.raises(InvalidPath):
        classify(path)


@pytest.mark.parametrize(
    "raw",
    [
        "/dicom-web/../x",
        "/dicom-web/%2e%2e/x",
        "/a%2Fb",
        "/a%5cb",
        "/a\\b",
        "/./x",
        "/a/%2E/b",
        "/a%00b",
    ],
)
def test_check_path_refuses_traversal(raw: str) -> None:
    with pytest.raises(InvalidPath):
        check_path(raw)


def test_check_path_accepts_ordinary_paths() -> None:
    check_path(f"/dicom-web/studies/{S}/series/{SE}/instances/{SOP}/frames/1,2")


@pytest.mark.parametrize(
    "raw",
    ["studies/1.2%0d%0aX-Injected:%201", "studies/%00", "studies/1.2\r\nX: y", "a%7f", "a%1B"],
)
def test_control_characters_refused_literal_or_encoded(raw: str) -> None:
    with pytest.raises(InvalidPath):
        check_path(raw)


@pytest.mark.parametrize(
    "raw",
    [
        "..;/admin",
        "x/.%2e;jsessionid=1/y",
        ".;",
        "%252e%252e",
        "%252F",
        "%c0%ae%c0%ae",
        "%C1%9C",
        "%e0%80%ae",
    ],
)
def test_disguised_dot_segments_refused(raw: str) -> None:
    with pytest.raises(InvalidPath):
        check_path(raw)


@pytest.mark.parametrize("raw", ["studies/1.2;x=1", "a/b.c", "%25", "%e2%82%ac", "studies/...."])
def test_lookalikes_that_are_not_traversal_pass(raw: str) -> None:
    check_path(raw)
