"""Loopback ports: a free one to bind, and a wait until something listens."""

from __future__ import annotations

import asyncio
import socket

# Ports handed out by this process: one given but not bound yet (a balancer's front
# port, chosen before its replicas start) could otherwise be given again.
_GIVEN: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, never one this process was given before."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


async def wait_port(port: int, timeout: float = 20.0) -> None:
    """Until something accepts connections on ``port`` (no fixed sleeps)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")
