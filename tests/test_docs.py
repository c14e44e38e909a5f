"""The docs: the configuration reference is generated and current, links resolve."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness import configref
from proxy.options import OPTION_FIELDS, option_env, option_flag

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
# [text](target) and ![alt](target); a target has no spaces (titles are not used here).
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FLAG_CELL = re.compile(r"^\| `(--[a-z0-9-]+)")


def test_configuration_reference_is_current() -> None:
    """``make docs`` regenerates it; this fails when someone forgot to."""
    assert configref.TARGET.read_text() == configref.render()


def test_reference_names_every_option_with_flag_env_and_key() -> None:
    text = configref.TARGET.read_text()
    for name in OPTION_FIELDS:
        assert f"`{option_flag(name)}" in text, name
        assert f"`{option_env(name)}`" in text, name
        assert f"`{name}`" in text, name


def test_every_option_the_reference_names_exists() -> None:
    rows = [FLAG_CELL.match(line) for line in configref.TARGET.read_text().splitlines()]
    named = [row.group(1) for row in rows if row]
    assert len(named) == len(set(named)) == len(OPTION_FIELDS)
    assert set(named) == {option_flag(name) for name in OPTION_FIELDS}


def test_generator_refuses_options_it_does_not_know(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(configref.NOTES, "no_such_option", "x")
    with pytest.raises(ValueError, match="no_such_option"):
        configref.render()


def test_check_mode_reports_a_current_file() -> None:
    assert configref.main(["--check"]) == 0


@pytest.mark.parametrize("page", DOCS, ids=lambda page: str(page.relative_to(ROOT)))
def test_relative_links_point_to_existing_files(page: Path) -> None:
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # another site, or an anchor in the same page
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            broken.append(target)
    assert broken == []


REPO_PATH = re.compile(
    r"`((?:proxy|tests|bench|harness|demo|helm|deploy)/[\w./-]+\.(?:py|cfg|yaml|conf))`"
)


@pytest.mark.parametrize("page", DOCS, ids=lambda page: str(page.relative_to(ROOT)))
def test_repository_paths_named_in_code_spans_exist(page: Path) -> None:
    """``tests/cache/test_cache.py`` and the like, written as code: they move with the
    code (tests were reorganised to mirror the package), and a stale one misleads."""
    missing = [path for path in REPO_PATH.findall(page.read_text()) if not (ROOT / path).exists()]
    assert not missing, missing
