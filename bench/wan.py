"""An emulated WAN link as a user-space TCP relay on loopback (this kernel has no netem).

``python -m bench.wan LISTEN_PORT TARGET_PORT [--delay-ms 25] [--rate-mbit 100]
[--slow-start]``

Every byte is delayed by ``delay`` in each direction (so the round trip gains twice
that) and each direction is one shared link whose rate is capped by a token bucket:
a chunk may leave only when the link has finished serialising the chunks before it,
whichever connection they belong to.  The TCP handshake itself is not delayed
(clients reuse connections, so it rarely matters); data, including the first request
and the first response byte, is.

The loopback TCP between the relay and each end has no such delay, so its congestion
window never limits anything.  With ``--slow-start`` each direction of each connection
also keeps the window a real sender would over the emulated round trip (:class:`Window`):
a new or idle connection starts at 10 segments and doubles per round trip, which is
what makes a large answer cost round trips over a WAN, not only bandwidth.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
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


# RFC 6928's initial window, 10 segments of a 1460-byte MSS (Ethernet MTU, IPv4).
INITIAL_WINDOW = 10 * 1460


class Window:
    """One sender's congestion window in slow start (RFC 5681 section 3.1), with no loss:
    at most ``cwnd`` bytes unacknowledged, an acknowledgement one emulated round trip
    after the bytes left, and ``cwnd`` grown by every byte acknowledged (so doubled per
    round trip).  After an idle longer than the retransmission timeout the window
    restarts at the initial one (section 4.1; Linux's ``tcp_slow_start_after_idle``)."""

    def __init__(self, rtt: float) -> None:
        self.rtt = rtt
        self.rto = max(0.2, 4 * rtt)  # Linux's 200 ms floor
        self.cwnd = INITIAL_WINDOW
        self.unacked = 0
        self.acks: collections.deque[tuple[float, int]] = collections.deque()
        self.last_sent = time.monotonic()

    def open(self, now: float) -> int:
        """How many bytes may leave now."""
        while self.acks and self.acks[0][0] <= now:
            acked = self.acks.popleft()[1]
            self.unacked -= acked
            self.cwnd += acked
        if not self.acks and now - self.last_sent > self.rto:
            self.cwnd = min(self.cwnd, INITIAL_WINDOW)
        return self.cwnd - self.unacked

    def next_ack(self) -> float:
        return self.acks[0][0] if self.acks else time.monotonic()

    def sent(self, size: int, arrives: float) -> None:
        self.unacked += size
        self.acks.append((arrives + self.rtt / 2, size))
        self.last_sent = time.monotonic()


async def _read_side(
    reader: asyncio.StreamReader,
    link: Link,
    queue: asyncio.Queue[tuple[float, bytes]],
    window: Window | None,
) -> None:
    while chunk := await reader.read(CHUNK):
        if window is None:
            await queue.put((link.departure(len(chunk)), chunk))
            continue
        while chunk:  # the window is judged when the bytes are there: an idle restarts it
            room = await _allowed(window)
            piece, chunk = chunk[:room], chunk[room:]
            arrives = link.departure(len(piece))
            window.sent(len(piece), arrives)
            await queue.put((arrives, piece))
    await queue.put((link.departure(0), b""))


async def _allowed(window: Window) -> int:
    """Wait until the window lets some bytes leave; how many."""
    while (room := window.open(time.monotonic())) <= 0:
        await asyncio.sleep(max(0.0, window.next_ack() - time.monotonic()))
    return room


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


async def pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    link: Link,
    window: Window | None = None,
) -> None:
    """Copy one direction through ``link``; half-close the far side at EOF."""
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)
    await asyncio.gather(_read_side(reader, link, queue, window), _write_side(writer, queue))


class WanRelay:
    """Listens on ``127.0.0.1:listen_port`` and relays to ``127.0.0.1:target_port``."""

    def __init__(
        self,
        target_port: int,
        *,
        delay_ms: float = 25.0,
        rate_mbit: float = 100.0,
        slow_start: bool = False,
    ):
        self.target_port = target_port
        self.rtt = 2 * delay_ms / 1000 if slow_start else None
        self.connections: set[asyncio.Task[None]] = set()
        self.up = Link(delay_ms / 1000, rate_mbit * 1e6 / 8)
        self.down = Link(delay_ms / 1000, rate_mbit * 1e6 / 8)
        self.server: asyncio.Server | None = None

    async def start(self, listen_port: int = 0) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", listen_port)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening and cut the connections still open."""
        if self.server is not None:
            self.server.close()
        for connection in self.connections:
            connection.cancel()
        await asyncio.gather(*self.connections, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.connections.add(task)
            task.add_done_callback(self.connections.discard)
        try:
            origin_r, origin_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            return
        try:
            await asyncio.gather(
                pump(client_r, origin_w, self.up, self._window()),
                pump(origin_r, client_w, self.down, self._window()),
            )
        except (OSError, asyncio.IncompleteReadError):
            pass  # either side vanished: close both
        finally:
            origin_w.close()
            client_w.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await asyncio.gather(origin_w.wait_closed(), client_w.wait_closed())

    def _window(self) -> Window | None:
        return None if self.rtt is None else Window(self.rtt)


async def _main(args: argparse.Namespace) -> None:
    relay = WanRelay(
        args.target_port,
        delay_ms=args.delay_ms,
        rate_mbit=args.rate_mbit,
        slow_start=args.slow_start,
    )
    await relay.start(args.listen_port)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("listen_port", type=int)
    parser.add_argument("target_port", type=int)
    parser.add_argument("--delay-ms", type=float, default=25.0)
    parser.add_argument("--rate-mbit", type=float, default=100.0)
    parser.add_argument("--slow-start", action="store_true", help="emulate TCP slow start")
    asyncio.run(_main(parser.parse_args()))
