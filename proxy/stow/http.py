"""The aiohttp side of STOW-RS: the request handler and the ``/admin/dead-letter`` routes."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from multidict import CIMultiDict

from proxy import metrics
from proxy.admin import require_admin
from proxy.client_body import request_body
from proxy.dicomweb import stow_encoding
from proxy.dicomweb.media import parse_accept, parse_media_type, quality
from proxy.errors import BadRequest
from proxy.exchange import Exchange, request_id
from proxy.state import DEAD_LETTERS, SETTINGS, STUDIES_CHANGED, UPSTREAM
from proxy.stow.service import DeadLetterService, Outcome, StowRequest, notify, store
from proxy.stow.spool import kind_of

log = logging.getLogger("dicomweb_proxy")

_XML = frozenset({"application/dicom+xml", "application/xml", "text/xml"})
_JSON = frozenset({"application/dicom+json", "application/json", "application/*", "*/*"})


async def handle(request: web.Request, exchange: Exchange) -> web.Response:
    """POST /studies and POST /studies/{uid} (PS3.18 section 10.5)."""
    settings = request.app[SETTINGS]
    content_type = request.headers.get("Content-Type", "")
    kind_of(parse_media_type(content_type))  # 415 before a byte is read
    body = request_body(request, settings.max_body) or _empty()
    stow = StowRequest(
        request_id=exchange.request_id,
        target=exchange.relative_path.split("?", 1)[0].strip("/"),
        url=exchange.upstream_url,
        headers=exchange.upstream_headers,
        rewriter=exchange.rewriter,
    )
    try:
        outcome = await store(body, content_type, stow, settings, request.app[UPSTREAM])
    except ConnectionResetError:
        # The client went away mid-upload: the spool is already cleaned, nothing sent.
        log.info("STOW client disconnected before the body was complete [%s]", stow.request_id)
        raise BadRequest("the client closed the connection mid-upload") from None
    if outcome.dead_lettered:
        log.warning(
            "STOW: %d instances kept in the dead letter [%s]",
            outcome.dead_lettered,
            stow.request_id,
        )
    subscribers = request.app[STUDIES_CHANGED]
    await notify(subscribers, set(outcome.stored_studies))
    await _record_metrics(request, outcome)
    return render(request, outcome, exchange.request_id)


async def _record_metrics(request: web.Request, outcome: Outcome) -> None:
    """SPEC section 6: batches and instances by outcome, dead-letter entries now."""
    for name, count in outcome.batches.items():
        metrics.stow_batch(request, name, count)
    result = outcome.response.result
    metrics.stow_instances(request, "stored", len(result.referenced))
    metrics.stow_instances(request, "failed", len(result.failed))
    metrics.stow_instances(request, "dead_lettered", outcome.dead_lettered)
    if outcome.dead_lettered:
        await request.app[DEAD_LETTERS].recount()


async def _empty() -> AsyncIterator[bytes]:
    return
    yield  # pragma: no cover - makes this an async generator


def render(request: web.Request, outcome: Outcome, rid: str) -> web.Response:
    """JSON unless the client's ``Accept`` prefers XML (PS3.18 section 10.5.3)."""
    xml = wants_xml(request.headers.get("Accept", ""))
    body = (stow_encoding.to_xml if xml else stow_encoding.to_json)(outcome.response)
    headers: CIMultiDict[str] = CIMultiDict({"X-Request-ID": rid, "Vary": "Accept"})
    for warning in outcome.warnings:
        headers.add("Warning", warning)
    return web.Response(
        status=outcome.response.status,
        body=body,
        headers=headers,
        content_type="application/dicom+xml" if xml else "application/dicom+json",
    )


def wants_xml(accept: str) -> bool:
    """True when the best-ranked acceptable STOW response type is XML (RFC 9110 12.5.1)."""
    best = {"xml": 0.0, "json": 0.0 if accept.strip() else 1.0}
    for media in parse_accept(accept):
        for name, types in (("xml", _XML), ("json", _JSON)):
            if media.main in types:
                best[name] = max(best[name], quality(media))
    return best["xml"] > best["json"]


# -- /admin/dead-letter -------------------------------------------------------------------


def add_admin_routes(app: web.Application) -> None:
    """``GET /admin/dead-letter[/{id}]``, ``POST .../{id}/replay``, ``DELETE .../{id}``."""
    app.router.add_get("/admin/dead-letter", listing)
    app.router.add_get("/admin/dead-letter/{id}", show)
    app.router.add_post("/admin/dead-letter/{id}/replay", resend)
    app.router.add_delete("/admin/dead-letter/{id}", drop)


def _dead_letters(request: web.Request) -> DeadLetterService:
    require_admin(request)
    return request.app[DEAD_LETTERS]


async def listing(request: web.Request) -> web.StreamResponse:
    return web.json_response({"entries": await _dead_letters(request).entries()})


async def show(request: web.Request) -> web.StreamResponse:
    return web.json_response(await _dead_letters(request).entry(_id(request)))


async def resend(request: web.Request) -> web.StreamResponse:
    result = await _dead_letters(request).replay(_id(request), request_id(request))
    return web.json_response(dataclasses.asdict(result), status=200 if result.stored else 502)


async def drop(request: web.Request) -> web.StreamResponse:
    await _dead_letters(request).drop(_id(request))
    return web.Response(status=204)


def _id(request: web.Request) -> str:
    return request.match_info["id"]
