"""The ``/admin/`` status page: one HTML page an operator reads in a browser.

Shows the cache (size, entries, hit ratio), bytes served from the cache and from the
upstream, upstream health and latency, the last requests (query values already
removed by :mod:`proxy.logs`) and the dead-letter entries with replay/drop buttons.
Behind :func:`proxy.admin.require_admin`; a browser signs in with the admin token
through a form that sets a session cookie.  Every value is HTML-escaped (the builders
of :mod:`proxy.status_html`).
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Mapping

from aiohttp import web

from proxy import admin, metrics
from proxy.errors import Forbidden, PayloadTooLarge, Unauthorized
from proxy.settings import format_size
from proxy.state import ADMIN_TOKEN, DEAD_LETTERS, METRICS, READINESS, RECENT
from proxy.status_html import (
    Markup,
    escape,
    html_response,
    login_form,
    page,
    section,
    table,
    table_rows,
)
from proxy.streams import read_at_most

_FORM_LIMIT = 4096
_NOTICES = {
    "replayed": "Replayed: the instance was stored upstream.",
    "replay-failed": "Replay failed: the entry stays in the dead-letter store.",
    "dropped": "Dropped.",
}


def setup(app: web.Application) -> None:
    app.router.add_get("/admin", _to_page)
    app.router.add_get("/admin/", status_page)
    app.router.add_post("/admin/login", login)
    app.router.add_post("/admin/logout", logout)
    app.router.add_post("/admin/ui/dead-letter/{entry}/{action:replay|drop}", dead_letter_action)


async def _to_page(request: web.Request) -> web.StreamResponse:
    return _see_other("/admin/")


def _see_other(location: str) -> web.Response:
    """A redirect returned, not raised, so the access log sees its real size."""
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


# -- handlers -------------------------------------------------------------------------


async def status_page(request: web.Request) -> web.StreamResponse:
    try:
        admin.require_admin(request)
    except Unauthorized:
        return html_response(login_form(), status=401)
    sections = [
        _notice(request.query.get("done", "")),
        _cache_section(request.app),
        await _upstream_section(request.app),
        await _dead_letter_section(request.app),
        _recent_section(request.app),
    ]
    return html_response(page("dicomweb-proxy status", "".join(sections), signed_in=True))


async def login(request: web.Request) -> web.StreamResponse:
    """Form sign-in: a right token sets the session cookie (see :mod:`proxy.admin`)."""
    if not request.app.get(ADMIN_TOKEN):
        admin.require_admin(request)  # 404: admin disabled
    form = await _read_form(request)
    if not admin.token_matches(request.app, form.get("token", "")):
        return html_response(login_form(error="That token is not valid."), status=401)
    response = _see_other("/admin/")
    admin.start_session(request, response)
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    response = _see_other("/admin/")
    admin.end_session(response)
    return response


async def dead_letter_action(request: web.Request) -> web.StreamResponse:
    admin.require_admin(request)
    _same_origin(request)
    dead_letters = request.app[DEAD_LETTERS]
    entry = request.match_info["entry"]
    if request.match_info["action"] == "drop":
        await dead_letters.drop(entry)
        done = "dropped"
    else:
        done = "replayed" if (await dead_letters.replay(entry)).stored else "replay-failed"
    return _see_other(f"/admin/?done={done}")


def _same_origin(request: web.Request) -> None:
    """Belt and braces next to SameSite=Strict: refuse cross-site form posts."""
    origin = request.headers.get("Origin")
    if origin and urllib.parse.urlsplit(origin).netloc != request.host:
        raise Forbidden("cross-origin admin action refused")


async def _read_form(request: web.Request) -> dict[str, str]:
    """A small urlencoded form, read with a bound (the app itself sets none)."""
    body = await read_at_most(request.content.iter_any(), _FORM_LIMIT)
    if body is None:
        raise PayloadTooLarge("the form is too large")
    pairs = urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    return dict(pairs)


# -- sections -------------------------------------------------------------------------


def _cache_section(app: web.Application) -> str:
    stats = metrics.cache_stats(app)
    found = app.get(METRICS)
    rows: list[tuple[str, str]] = []
    if stats:
        rows += [
            ("Entries", f"{stats.get('entries', 0):,}"),
            ("Size", format_size(stats.get("bytes", 0))),
        ]
    else:
        rows.append(("Disk cache", "not available"))
    hits, misses = _hits_and_misses(stats, found)
    rows.append(("Hit ratio", hit_ratio(hits, misses)))
    if found:
        from_cache = found.value("dicomweb_proxy_cache_served_bytes_total", source="cache")
        upstream = found.value("dicomweb_proxy_cache_served_bytes_total", source="upstream")
        rows += [
            ("Served from cache", format_size(from_cache)),
            ("Served from upstream", format_size(upstream)),
        ]
    return section("Cache", "cache", table_rows(rows))


def _hits_and_misses(
    stats: Mapping[str, int], found: metrics.Metrics | None
) -> tuple[float, float]:
    if "hits" in stats and "misses" in stats:
        return float(stats["hits"]), float(stats["misses"])
    if found is None:
        return 0.0, 0.0
    name = "dicomweb_proxy_cache_requests_total"
    hits = found.value(name, result="hit") + found.value(name, result="stale")
    return hits + found.value(name, result="revalidated"), found.value(name, result="miss")


async def _upstream_section(app: web.Application) -> str:
    rows: list[tuple[str, str]] = []
    readiness = app.get(READINESS)
    if readiness is not None:
        report = await readiness.check()
        rows += [
            ("Ready", "yes" if report.get("ready") else "no"),
            ("Upstream", str(report.get("upstream", "-"))),
            ("Probe latency", f"{report.get('upstream_latency_ms', '-')} ms"),
            ("Storage", str(report.get("storage", "-"))),
        ]
    found = app.get(METRICS)
    if found:
        count = found.value("dicomweb_proxy_upstream_duration_seconds_count")
        total = found.value("dicomweb_proxy_upstream_duration_seconds_sum")
        mean = f"{total / count * 1000:.1f} ms" if count else "-"
        rows += [("Upstream requests", f"{count:,.0f}"), ("Mean time to first byte", mean)]
    return section("Upstream", "upstream", table_rows(rows))


async def _dead_letter_section(app: web.Application) -> str:
    entries = await app[DEAD_LETTERS].entries()
    if not entries:
        return section("Dead letter", "dead-letter", "<p>No entries.</p>")
    columns = ("id", "time", "study", "sop", "status", "reason", "attempts")
    rows: list[list[str]] = [
        [*(_cell(entry, key) for key in columns), _actions(entry)] for entry in entries
    ]
    headers = ["Id", "Time", "Study", "SOP Instance", "Status", "Reason", "Attempts", ""]
    return section("Dead letter", "dead-letter", table(headers, rows))


def _actions(entry: Mapping[str, object]) -> Markup:
    quoted = urllib.parse.quote(str(entry.get("id", "")), safe="")
    buttons = []
    for action, label in (("replay", "Replay"), ("drop", "Drop")):
        buttons.append(
            f'<form method="post" action="/admin/ui/dead-letter/{escape(quoted)}/{action}">'
            f'<button type="submit" name="{action}">{label}</button></form>'
        )
    return Markup("".join(buttons))


def _recent_section(app: web.Application) -> str:
    recent = list(app.get(RECENT, ()))[::-1]
    if not recent:
        return section("Recent requests", "recent", "<p>None yet.</p>")
    rows = [
        [
            time.strftime("%H:%M:%S", time.localtime(record["time"])),
            record["method"],
            record["path"],
            str(record["status"]),
            format_size(record["bytes"]),
            f"{record['duration_ms']:.1f} ms",
            record["cache"] or "-",
            "-" if record["upstream_ms"] is None else f"{record['upstream_ms']:.1f} ms",
            record["request_id"],
        ]
        for record in recent
    ]
    headers = ["Time", "Method", "Path", "Status", "Bytes", "Duration", "Cache", "Upstream", "Id"]
    return section("Recent requests", "recent", table(headers, rows))


def _cell(entry: Mapping[str, object], key: str) -> str:
    value = entry.get(key)
    return "-" if value is None else str(value)


def _notice(code: str) -> str:
    text = _NOTICES.get(code)
    return f'<p class="notice">{escape(text)}</p>' if text else ""


def hit_ratio(hits: float, misses: float) -> str:
    total = hits + misses
    return f"{hits / total:.1%} ({hits:,.0f} of {total:,.0f})" if total else "-"
