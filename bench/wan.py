"""An emulated WAN link as a user-space TCP relay on loopback (this kernel has no netem).

``python -m bench.wan LISTEN_PORT TARGET_PORT [--delay-ms 25] [--rate-mbit 100]``

Every byte is delayed by ``delay`` in each direction (so the round trip gains twice
that) and each direction is one shared link whose rate is capped by a token bucket:
a chunk may leave only when the link has finished serialising the chunks before it,
whichever connection they belong to.  The TCP handshake itself is not delayed
(clients reuse connections, so it rarely matters); data, including the first request
and the first response byte, is.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time

CHUNK = 64 * 1024
# Bytes a pump may read ahead of the link: a few bandwidth-delay products.
QUEUE_CHUNKS = 64


class Link:
    """One direction of the WAN: a rate (token bucket with no burst) plus a delay."""

    def __init__(self, delay: float, rate_bytes: float) -> None:
        self.delay = delay
        self.rate_bytes = rate_bytes
        self._free_at = 0.0

    def departure(self, size: int) -> float:
        """When a chunk of ``size`` bytes read now arrives at the far end."""
        now = time.monotonic()
        self._free_at = max(now, self._free_at) + size / self.rate_bytes
        return self._free_at + self.delay


async def _read_side(
    reader: asyncio.StreamReader, link: Link, queue: asyncio.Queue[tuple[float, bytes]]
) -> None:
    while chunk := await reader.read(CHUNK):
        await queue.put((link.departure(len(chunk)), chunk))
    await queue.put((link.departure(0), b""))


async def _write_side(
    writer: asyncio.StreamWriter, queue: asyncio.Queue[tuple[float, bytes]]
) -> None:
    while True:
        due, chunk = await queue.get()
        wait = due - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        if not chunk:
            with contextlib.suppress(OSError):
                writer.write_eof()
            return
        writer.write(chunk)
        await writer.drain()


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: Link) -> None:
    """Copy one direction through ``link``; half-close the far side at EOF."""
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)
    await asyncio.gather(_read_side(reader, link, queue), _write_side(writer, queue))


class WanRelay:
    """Listens on ``127.0.0.1:listen_port`` and relays to ``127.0.0.1:target_port``."""

    def __init__(self, target_port: int, *, delay_ms: float = 25.0, rate_mbit: float = 100.0):
        self.target_port = target_port
        self.up = Link(delay_ms / 1000, rate_mbit * 1e6 / 8)
        self.down = Link(delay_ms / 1000, rate_mbit * 1e6 / 8)
        self.server: asyncio.Server | None = None

    async def start(self, listen_port: int = 0) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", listen_port)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            origin_r, origin_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            return
        try:
            await asyncio.gather(
                pump(client_r, origin_w, self.up), pump(origin_r, client_w, self.down)
            )
        except (OSError, asyncio.IncompleteReadError):
            pass  # either side vanished: close both
        finally:
            origin_w.close()
            client_w.close()


async def _main(args: argparse.Namespace) -> None:
    relay = WanRelay(args.target_port, delay_ms=args.delay_ms, rate_mbit=args.rate_mbit)
    await relay.start(args.listen_port)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("listen_port", type=int)
    parser.add_argument("target_port", type=int)
    parser.add_argument("--delay-ms", type=float, default=25.0)
    parser.add_argument("--rate-mbit", type=float, default=100.0)
    asyncio.run(_main(parser.parse_args()))
