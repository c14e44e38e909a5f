"""Application state: every :class:`aiohttp.web.AppKey` of the proxy, in one place.

A leaf module, as aiohttp-demos keep their keys in ``typedefs.py``: it imports nothing
of the proxy at run time (the types the keys carry are imported for the type checker
only), so any module may read the state it needs without importing ``proxy.app``.
``create_app`` and the ``cleanup_ctx`` steps it registers set the keys; handlers read
them.  Keys absent from an application mean the feature is off (``--no-cache``, no
``--admin-token``, no ``--inbound-auth``, no ``--viewer-dir``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from proxy.auth.inbound import Gate
    from proxy.auth.partition import Partitioner
    from proxy.cache.express import Lane
    from proxy.cache.service import Cache
    from proxy.health import Readiness
    from proxy.logs import AccessRecord
    from proxy.metrics import Metrics
    from proxy.settings import Settings
    from proxy.stow.service import DeadLetterService
    from proxy.upstream import Upstream
    from proxy.viewer import ViewerFiles

# Async callbacks told which studies a STOW (or a replay) changed: the cache drops
# their entries (SPEC section 3).
StudiesChanged = Callable[[set[str]], Awaitable[None]]

# -- set by create_app ----------------------------------------------------------------
SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
STOPPING = web.AppKey("stopping", asyncio.Event)
STUDIES_CHANGED: web.AppKey[list[StudiesChanged]] = web.AppKey("studies_changed")
ADMIN_TOKEN = web.AppKey("admin_token", str)
INBOUND: web.AppKey[Gate] = web.AppKey("inbound_auth")
PARTITIONER: web.AppKey[Partitioner] = web.AppKey("partitioner")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
RECENT: web.AppKey[deque[AccessRecord]] = web.AppKey("recent_requests")
VIEWER: web.AppKey[ViewerFiles] = web.AppKey("viewer")

# -- set by the cleanup_ctx steps, once the application starts -------------------------
UPSTREAM: web.AppKey[Upstream] = web.AppKey("upstream")
READINESS: web.AppKey[Readiness] = web.AppKey("readiness")
DEAD_LETTERS: web.AppKey[DeadLetterService] = web.AppKey("dead_letters")
CACHE: web.AppKey[Cache] = web.AppKey("cache")
EXPRESS: web.AppKey[Lane] = web.AppKey("express")  # absent: every request goes to aiohttp

# The application a ``--metrics-listen`` server reports on (a key of that small server).
METRICS_OWNER = web.AppKey("metrics_owner", web.Application)
