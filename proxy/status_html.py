"""The status page's HTML: small builders that escape every value they are given.

Cells and values are escaped here; only :class:`Markup` (HTML these builders made from
escaped parts) passes through as it is.  Responses carry ``no-store`` and a strict
Content-Security-Policy (no script at all).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence

from aiohttp import web

_SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222}
table{border-collapse:collapse;margin-bottom:1.5rem}
th,td{border-bottom:1px solid #ddd;padding:.25rem .6rem;text-align:left;font-size:.9rem}
th{background:#f3f3f3} td.n{text-align:right} form{display:inline}
.notice{background:#eef6ee;padding:.5rem;border-left:4px solid #4a4}
.error{background:#fbeaea;padding:.5rem;border-left:4px solid #c44}
"""


class Markup(str):
    """HTML built here from escaped parts; table cells of this type are not escaped."""


def escape(value: object) -> str:
    return html.escape(str(value), quote=True)


def page(title: str, body: str, *, signed_in: bool = False) -> str:
    logout_form = (
        '<form method="post" action="/admin/logout"><button>Sign out</button></form>'
        if signed_in
        else ""
    )
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f'<body><h1>{escape(title)}</h1><p><a href="/admin/">Refresh</a> {logout_form}</p>'
        f"{body}</body></html>"
    )


def login_form(error: str = "") -> str:
    message = f'<p class="error">{escape(error)}</p>' if error else ""
    form = (
        f'{message}<form method="post" action="/admin/login">'
        '<label for="token">Admin token</label> '
        '<input id="token" name="token" type="password" autocomplete="current-password" '
        'required autofocus> <button type="submit">Sign in</button></form>'
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>dicomweb-proxy admin</title><style>{_STYLE}</style></head>"
        f"<body><h1>dicomweb-proxy admin</h1>{form}</body></html>"
    )


def section(title: str, anchor: str, content: str) -> str:
    return f'<section id="{anchor}"><h2>{escape(title)}</h2>{content}</section>'


def table_rows(rows: Iterable[tuple[str, str]]) -> str:
    body = "".join(
        f"<tr><th>{escape(key)}</th><td>{escape(value)}</td></tr>" for key, value in rows
    )
    return f"<table>{body}</table>"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A table of escaped cells; :class:`Markup` cells (built here) stay HTML."""
    head = "".join(f"<th>{escape(name)}</th>" for name in headers)
    lines = []
    for row in rows:
        cells = "".join(
            f"<td>{cell}</td>" if isinstance(cell, Markup) else f"<td>{escape(cell)}</td>"
            for cell in row
        )
        lines.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(lines)}</table>"


def html_response(body: str, *, status: int = 200) -> web.Response:
    return web.Response(
        text=body, status=status, content_type="text/html", headers=_SECURITY_HEADERS
    )
