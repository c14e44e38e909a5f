"""The aiohttp side of STOW-RS: the request handler and the ``/admin/dead-letter`` routes."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict

from proxy import headers as hdrs
from proxy import metrics
from proxy.admin import DEAD_LETTERS, require_admin
from proxy.client_body import request_body
from proxy.dicomweb import stow_response
from proxy.dicomweb.multipart import parse_media_type
from proxy.errors import BadRequest
from proxy.exchange import Exchange, request_id
from proxy.settings import Settings
from proxy.stow.dead_letter import DeadLetter
from proxy.stow.service import Outcome, StowRequest, replay, store
from proxy.stow.spool import kind_of
from proxy.upstream import Upstream

log = logging.getLogger("dicomweb_proxy")

StudiesChanged = Callable[[set[str]], Awaitable[None]]
_XML = frozenset({"application/dicom+xml", "application/xml", "text/xml"})
_JSON = frozenset({"application/dicom+json", "application/json", "application/*", "*/*"})


@dataclass(frozen=True)
class Context:
    settings: Settings
    upstream: Upstream
    studies_changed: list[StudiesChanged]


async def handle(request: web.Request, exchange: Exchange, context: Context) -> web.Response:
    """POST /studies and POST /studies/{uid} (PS3.18 section 10.5)."""
    content_type = request.headers.get("Content-Type", "")
    kind_of(parse_media_type(content_type))  # 415 before a byte is read
    body = request_body(request, context.settings.max_body) or _empty()
    stow = StowRequest(
        request_id=exchange.request_id,
        target=exchange.relative_path.split("?", 1)[0].strip("/"),
        url=exchange.upstream_url,
        headers=exchange.upstream_headers,
        rewriter=exchange.rewriter,
    )
    try:
        outcome = await store(body, content_type, stow, context.settings, context.upstream)
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
    await _notify(context, set(outcome.stored_studies))
    await _record_metrics(request, context, outcome)
    return render(request, outcome, exchange.request_id)


async def _record_metrics(request: web.Request, context: Context, outcome: Outcome) -> None:
    """SPEC section 6: batches and instances by outcome, dead-letter entries now."""
    for name, count in outcome.batches.items():
        metrics.stow_batch(request, name, count)
    result = outcome.response.result
    metrics.stow_instances(request, "stored", len(result.referenced))
    metrics.stow_instances(request, "failed", len(result.failed))
    metrics.stow_instances(request, "dead_lettered", outcome.dead_lettered)
    if outcome.dead_lettered:
        await _count_dead_letters(request.app, context.settings)


async def _count_dead_letters(app: web.Application, settings: Settings) -> None:
    dead_letter = DeadLetter(settings.dead_letter_path)
    metrics.dead_letter_entries(app, await asyncio.to_thread(dead_letter.count))


async def _empty() -> AsyncIterator[bytes]:
    return
    yield  # pragma: no cover - makes this an async generator


async def _notify(context: Context, studies: set[str]) -> None:
    """Tell subscribers (the cache) which studies changed (SPEC section 3)."""
    if studies:
        for callback in context.studies_changed:
            await callback(set(studies))


def render(request: web.Request, outcome: Outcome, rid: str) -> web.Response:
    """JSON unless the client's ``Accept`` prefers XML (PS3.18 section 10.5.3)."""
    xml = wants_xml(request.headers.get("Accept", ""))
    body = (stow_response.to_xml if xml else stow_response.to_json)(outcome.response)
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
    for item in accept.split(","):
        media = parse_media_type(item)
        try:
            quality = float(media.params.get("q", "1"))
        except ValueError:
            continue
        for name, types in (("xml", _XML), ("json", _JSON)):
            if media.main in types:
                best[name] = max(best[name], quality)
    return best["xml"] > best["json"]


# -- /admin/dead-letter -------------------------------------------------------------------

ContextOf = Callable[[web.Application], Context]


def add_admin_routes(app: web.Application, context_of: ContextOf) -> None:
    """``GET /admin/dead-letter[/{id}]``, ``POST .../{id}/replay``, ``DELETE .../{id}``."""

    async def listing(request: web.Request) -> web.StreamResponse:
        require_admin(request)
        dead_letter = DeadLetter(context_of(request.app).settings.dead_letter_path)
        records = await asyncio.to_thread(dead_letter.records)
        return web.json_response({"entries": records})

    async def show(request: web.Request) -> web.StreamResponse:
        require_admin(request)
        dead_letter = DeadLetter(context_of(request.app).settings.dead_letter_path)
        return web.json_response(await asyncio.to_thread(dead_letter.record, _id(request)))

    async def resend(request: web.Request) -> web.StreamResponse:
        require_admin(request)
        context = context_of(request.app)
        headers = {"X-Request-ID": request_id(request), "Via": hdrs.VIA}
        result = await replay(_id(request), context.settings, context.upstream, headers)
        if result.stored:
            await _notify(context, {result.study})
        return web.json_response(dataclasses.asdict(result), status=200 if result.stored else 502)

    async def drop(request: web.Request) -> web.StreamResponse:
        require_admin(request)
        dead_letter = DeadLetter(context_of(request.app).settings.dead_letter_path)
        await asyncio.to_thread(dead_letter.drop, _id(request))
        return web.Response(status=204)

    app[DEAD_LETTERS] = DeadLetterAdmin(app, context_of)
    app.router.add_get("/admin/dead-letter", listing)
    app.router.add_get("/admin/dead-letter/{id}", show)
    app.router.add_post("/admin/dead-letter/{id}/replay", resend)
    app.router.add_delete("/admin/dead-letter/{id}", drop)


def _id(request: web.Request) -> str:
    return request.match_info["id"]


class DeadLetterAdmin:
    """The dead-letter store as the status page sees it (``proxy.admin.DeadLetterView``)."""

    def __init__(self, app: web.Application, context_of: ContextOf) -> None:
        self._app = app
        self._context_of = context_of

    def _context(self) -> Context:
        return self._context_of(self._app)

    async def entries(self) -> Sequence[Mapping[str, object]]:
        settings = self._context().settings
        return await asyncio.to_thread(DeadLetter(settings.dead_letter_path).records)

    async def replay(self, entry_id: str) -> bool:
        context = self._context()
        headers = {"X-Request-ID": uuid.uuid4().hex, "Via": hdrs.VIA}
        result = await replay(entry_id, context.settings, context.upstream, headers)
        if result.stored:
            await _notify(context, {result.study})
        await _count_dead_letters(self._app, context.settings)
        return result.stored

    async def drop(self, entry_id: str) -> None:
        settings = self._context().settings
        await asyncio.to_thread(DeadLetter(settings.dead_letter_path).drop, entry_id)
        await _count_dead_letters(self._app, settings)
