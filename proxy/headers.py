"""Header hygiene between client, proxy and upstream (RFC 9110 section 7.6).

Pure functions over header mappings; callers' mappings are never mutated.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from multidict import CIMultiDict, CIMultiDictProxy

from proxy.dicomweb.rewrite import Rewriter

VIA = "1.1 dicomweb-proxy"

# RFC 9110 section 7.6.1, plus the de-facto hop-by-hop headers nginx also drops.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    }
)

# Never passed upstream: an origin that builds URLs from them would put one client's
# host name into bodies the cache shares (SPEC section 2).
_CLIENT_ONLY = frozenset(
    {
        "host",
        "forwarded",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-forwarded-port",
        "x-forwarded-for",
        "via",
        "content-length",
        "expect",
        # Content coding is the proxy's own business on each side (SPEC section 2).
        "accept-encoding",
    }
)
# Client credentials reach the upstream only with --upstream-auth passthrough.
CREDENTIALS = frozenset({"authorization", "cookie"})

# Rewritten when served; everything else passes as the upstream sent it.
_URL_HEADERS = ("Location", "Content-Location", "Warning")
# Recomputed by the proxy for what it actually sends.  An upstream's own X-Cache (a CDN,
# a chained proxy) would be mistaken for this proxy's cache result in logs and metrics.
_RESPONSE_DROP = frozenset({"content-length", "date", "server", "x-cache"}) | HOP_BY_HOP


def _connection_tokens(headers: Mapping[str, str]) -> set[str]:
    """Headers named by ``Connection`` are hop-by-hop too (RFC 9110 section 7.6.1)."""
    value = headers.get("Connection", "")
    return {token.strip().lower() for token in value.split(",") if token.strip()}


def upstream_request_headers(
    client: CIMultiDictProxy[str] | Mapping[str, str],
    *,
    peer: str | None,
    request_id: str,
    pass_credentials: bool,
    accept_encoding: str,
) -> CIMultiDict[str]:
    """The headers sent upstream for a client request; ``accept_encoding`` is the
    proxy's choice, never the client's."""
    drop = HOP_BY_HOP | _CLIENT_ONLY | _connection_tokens(client)
    if not pass_credentials:
        drop = drop | CREDENTIALS
    headers = CIMultiDict((k, v) for k, v in client.items() if k.lower() not in drop)
    forwarded_for = client.get("X-Forwarded-For")
    if peer:
        forwarded_for = f"{forwarded_for}, {peer}" if forwarded_for else peer
    if forwarded_for:
        headers["X-Forwarded-For"] = forwarded_for
    headers["Via"] = _append_via(client.get("Via"))
    headers["X-Request-ID"] = request_id
    headers["Accept-Encoding"] = accept_encoding
    if "Content-Length" in client and "Transfer-Encoding" not in client:
        headers["Content-Length"] = client["Content-Length"]
    return headers


def client_response_headers(
    upstream: Mapping[str, str],
    rewriter: Rewriter,
    *,
    keep_length: bool,
) -> CIMultiDict[str]:
    """The headers sent to the client for an upstream (or cached) response; the
    caller adds ``X-Request-ID``."""
    drop = _RESPONSE_DROP | _connection_tokens(upstream)
    items: Iterable[tuple[str, str]] = upstream.items()
    headers = CIMultiDict((k, v) for k, v in items if k.lower() not in drop)
    for name in _URL_HEADERS:
        if name in headers:
            values = [rewriter.rewrite_header(value) for value in headers.getall(name)]
            del headers[name]
            for value in values:
                headers.add(name, value)
    if keep_length and "Content-Length" in upstream:
        headers["Content-Length"] = upstream["Content-Length"]
    headers["Via"] = _append_via(upstream.get("Via"))
    add_vary(headers, "Accept")
    return headers


def add_vary(headers: CIMultiDict[str], name: str) -> None:
    present = {item.strip().lower() for item in headers.get("Vary", "").split(",")}
    if name.lower() not in present and "*" not in present:
        headers["Vary"] = f"{headers['Vary']}, {name}" if "Vary" in headers else name


def _append_via(existing: str | None) -> str:
    return f"{existing}, {VIA}" if existing else VIA
