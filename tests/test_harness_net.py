"""harness.net: ports for the servers tests and benchmarks start."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from harness import net


class _Socket:
    """A socket whose bind(port 0) gets the next port of ``ports``."""

    ports: Iterator[int]

    def __init__(self, *args: Any) -> None:
        self.port = next(self.ports)

    def __enter__(self) -> _Socket:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def bind(self, address: tuple[str, int]) -> None:
        pass

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


def test_a_port_given_once_is_never_given_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel may offer a port again while whoever was given it has not bound it yet
    (a balancer's front port chosen before its replicas start)."""
    first = net.free_port()
    _Socket.ports = iter([first, first, *range(1024, 65536)])
    monkeypatch.setattr(net.socket, "socket", _Socket)
    second = net.free_port()
    assert second != first
    assert net.free_port() not in (first, second)


def test_a_free_port_can_be_bound() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", net.free_port()))
