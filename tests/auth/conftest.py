"""Fixtures for authentication tests: the in-process token endpoint, the fake upstream
accepting its tokens, a settable clock, and a check that no secret reaches the captured
logs or output."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.settings import Settings
from tests.authservers import TokenEndpoint, bearer_origin
from tests.fake_upstream import FakeUpstream
from tests.support import make_settings

ServerFactory = Callable[..., Awaitable[TestServer]]
Serve = Callable[[web.Application], Awaitable[str]]


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def secrets_checked(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> Iterator[set[str]]:
    """Every test here registers its secrets; none may appear in any log record
    (message or traceback, any logger, any thread) or on stdout/stderr."""
    caplog.set_level(logging.DEBUG)
    known: set[str] = set()
    yield known
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    records = [r for phase in ("setup", "call") for r in caplog.get_records(phase)]
    captured = capfd.readouterr()
    text = "\n".join(formatter.format(r) for r in records) + captured.out + captured.err
    leaked = sorted(secret for secret in known if secret and secret in text)
    assert not leaked, "secrets found in logs or output"


@pytest.fixture(autouse=True)
def _no_secret_leaks(secrets_checked: set[str]) -> set[str]:
    return secrets_checked


@pytest.fixture
async def idp(
    aiohttp_server: ServerFactory, secrets_checked: set[str]
) -> AsyncIterator[TokenEndpoint]:
    endpoint = TokenEndpoint()
    server = await aiohttp_server(endpoint.app)
    endpoint.url = str(server.make_url("/token"))
    yield endpoint
    secrets_checked.add(endpoint.client_secret)
    secrets_checked.update(endpoint.issued)


@pytest.fixture
def serve(aiohttp_server: ServerFactory) -> Serve:
    """Start an in-process app on 127.0.0.1; returns its base URL."""

    async def start(app: web.Application) -> str:
        server = await aiohttp_server(app)
        return str(server.make_url("")).rstrip("/")

    return start


@pytest.fixture
def oauth_upstream(idp: TokenEndpoint, fake: FakeUpstream) -> FakeUpstream:
    """The fake upstream accepting exactly the live tokens of ``idp``."""
    return bearer_origin(fake, idp.accepts)


def settings_for(upstream_url: str, tmp_path: Path, **overrides: object) -> Settings:
    return make_settings(upstream_url, tmp_path / "data", **overrides)
