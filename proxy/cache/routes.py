"""``/admin/cache`` endpoints (SPEC section 3, Purge), behind the admin token."""

from __future__ import annotations

from aiohttp import web

from proxy.admin import require_admin
from proxy.cache.service import Cache
from proxy.dicomweb.uri import is_valid_uid
from proxy.errors import BadRequest, NotFound
from proxy.state import CACHE


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin/cache", cache_stats)
    app.router.add_delete("/admin/cache", purge_all)
    app.router.add_delete("/admin/cache/studies/{uid}", purge_study)


def _cache(request: web.Request) -> Cache:
    require_admin(request)
    cache = request.app.get(CACHE)
    if cache is None:
        raise NotFound("the cache is disabled (--no-cache)")
    return cache


async def cache_stats(request: web.Request) -> web.StreamResponse:
    """Entries, bytes and the hit ratio (SPEC section 3, Purge)."""
    stats = _cache(request).stats()
    served = stats["hits"] + stats["misses"]
    ratio = round(stats["hits"] / served, 4) if served else 0.0
    return web.json_response({**stats, "hit_ratio": ratio})


async def purge_all(request: web.Request) -> web.StreamResponse:
    removed = await _cache(request).purge_all()
    return web.json_response({"removed": removed})


async def purge_study(request: web.Request) -> web.StreamResponse:
    cache = _cache(request)
    uid = request.match_info["uid"]
    if not is_valid_uid(uid):
        raise BadRequest("malformed study UID")
    return web.json_response({"removed": await cache.purge_study(uid)})
