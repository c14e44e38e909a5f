"""``python -m bench.uvloop_proxy serve ...``: the proxy on uvloop's event loop, for
:mod:`bench.loops` (the product itself runs on asyncio's default loop)."""

from __future__ import annotations

import asyncio
import sys

import uvloop

from proxy.cli import main

if __name__ == "__main__":
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    raise SystemExit(main(sys.argv[1:]))
