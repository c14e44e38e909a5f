"""Upstream Basic and bearer credentials, token file rotation, and WatchedFile."""

from __future__ import annotations

import os
from base64 import b64encode
from pathlib import Path

import pytest

from proxy.auth.credentials import BasicCredentials, BearerCredentials
from proxy.auth.watched import Secret, WatchedFile
from proxy.settings import SettingsError
from proxy.upstream import Upstream
from tests.auth.conftest import Clock, settings_for
from tests.authservers import authorizations, bearer_origin, statuses
from tests.fake_upstream import FakeUpstream


def rotate(path: Path, text: str) -> None:
    """Replace the file the way Kubernetes and Vault agent do: write, then rename."""
    temporary = path.with_suffix(".new")
    temporary.write_text(text)
    os.replace(temporary, path)


async def qido(upstream: Upstream) -> int:
    async with upstream.request("GET", upstream.base / "studies", {}) as response:
        return response.status


async def test_token_file_rotation_is_picked_up(
    fake: FakeUpstream, tmp_path: Path, clock: Clock, secrets_checked: set[str]
) -> None:
    first, second, third = "token-one-a1", "token-two-b2", "token-tre-c3"
    secrets_checked.update({first, second, third})
    accepted = {f"Bearer {first}"}
    origin = bearer_origin(fake, lambda authorization: authorization in accepted)
    base = origin.dicomweb
    token_file = tmp_path / "token"
    token_file.write_text(first + "\n")
    watched = WatchedFile(str(token_file), "upstream_token_file", clock=clock)
    upstream = Upstream(settings_for(base, tmp_path), BearerCredentials(Secret(file=watched)))
    try:
        assert await qido(upstream) == 200
        # Rotated within the same second: the 401 makes the proxy look again at once.
        rotate(token_file, second)
        accepted = {f"Bearer {second}"}
        assert await qido(upstream) == 200
        # Rotated later: seen on the next look, no 401 needed.
        clock.advance(1.5)
        rotate(token_file, third)
        accepted = {f"Bearer {third}"}
        assert await qido(upstream) == 200
    finally:
        await upstream.close()
    assert authorizations(origin) == [
        f"Bearer {first}",
        f"Bearer {first}",
        f"Bearer {second}",
        f"Bearer {third}",
    ]
    assert statuses(origin) == [200, 401, 200, 200]


async def test_basic_credentials_sent_on_every_request(
    fake: FakeUpstream, tmp_path: Path, secrets_checked: set[str]
) -> None:
    secrets_checked.add("pässword-9d")
    expected = "Basic " + b64encode("alice:pässword-9d".encode()).decode()
    origin = bearer_origin(fake, lambda authorization: authorization == expected)
    base = origin.dicomweb
    credentials = BasicCredentials("alice", Secret(inline="pässword-9d"))
    upstream = Upstream(settings_for(base, tmp_path), credentials)
    try:
        assert [await qido(upstream) for _ in range(2)] == [200, 200]
    finally:
        await upstream.close()
    assert "pässword-9d" not in repr(credentials)


async def test_static_bearer_refused_returns_the_401_without_retrying(
    fake: FakeUpstream, tmp_path: Path, secrets_checked: set[str]
) -> None:
    secrets_checked.add("static-token-44")
    origin = bearer_origin(fake, lambda authorization: False)
    base = origin.dicomweb
    credentials = BearerCredentials(Secret(inline="static-token-44"))
    upstream = Upstream(settings_for(base, tmp_path), credentials)
    try:
        assert await qido(upstream) == 401
    finally:
        await upstream.close()
    assert statuses(origin) == [401]


def test_watched_file_looks_at_most_once_per_interval(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "secret"
    path.write_text("one\n")
    watched = WatchedFile(str(path), "upstream_token_file", clock=clock)
    rotate(path, "two\n")
    assert watched.text() == "one\n"
    clock.advance(1.0)
    assert watched.text() == "two\n"
    assert watched.version == 1


def test_watched_file_keeps_last_value_when_file_vanishes_or_is_emptied(
    tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "secret"
    path.write_text("kept-value-5e\n")
    watched = WatchedFile(str(path), "upstream_token_file", clock=clock)
    rotate(path, "")
    clock.advance(1.0)
    assert watched.text() == "kept-value-5e\n"
    path.unlink()
    clock.advance(1.0)
    assert watched.text() == "kept-value-5e\n"
    assert "--upstream-token-file: cannot re-read" in caplog.text


def test_unreadable_file_names_the_option(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"^--upstream-token-file: cannot read .*missing"):
        WatchedFile(str(tmp_path / "missing"), "upstream_token_file")


def test_secret_repr_hides_the_value() -> None:
    assert "hidden-1" not in repr(Secret(inline="hidden-1"))
