"""One client request as the proxy sees it: resource, upstream URL, public base, id.

Built once per request by :func:`build`, then used by the forwarding, cache and STOW
code, so that path checks, classification and URL derivation happen in one place.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from urllib.parse import unquote

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy import headers as hdrs
from proxy.dicomweb import coding
from proxy.dicomweb.rewrite import Rewriter
from proxy.dicomweb.uri import InvalidPath, Resource, check_path, classify
from proxy.errors import BadRequest
from proxy.settings import Settings

# A request id we accept from a client: short, printable, no separators that could
# forge a log line or a header.
# A client's X-Request-ID is kept when it looks like one (the express lane uses it too).
REQUEST_ID = r"[A-Za-z0-9._:\-]{1,128}"
_REQUEST_ID = re.compile(f"^{REQUEST_ID}$")
_HOST = re.compile(r"^[A-Za-z0-9.\-_~%]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")
_SCHEMES = frozenset({"http", "https"})


@dataclass(frozen=True)
class Exchange:
    request_id: str
    resource: Resource
    relative_path: str
    upstream_url: URL
    rewriter: Rewriter
    client_headers: CIMultiDictProxy[str]
    peer: str | None
    pass_credentials: bool

    @functools.cached_property
    def upstream_headers(self) -> CIMultiDict[str]:
        """Computed on first use: a cache hit never needs them."""
        return hdrs.upstream_request_headers(
            self.client_headers,
            peer=self.peer,
            request_id=self.request_id,
            pass_credentials=self.pass_credentials,
            accept_encoding=coding.upstream_accept_encoding(self.resource.answers_in_text),
        )


EXCHANGE = web.RequestKey("exchange", Exchange)


def request_id(request: web.Request) -> str:
    """The client's ``X-Request-ID`` when it is well formed, else a fresh one."""
    given = request.headers.get("X-Request-ID", "")
    return given if _REQUEST_ID.match(given) else new_request_id()


def new_request_id() -> str:
    """128 random bits in hex: the id of a request that came without a usable one."""
    return os.urandom(16).hex()


def relative_raw_path(request: web.Request, base_path: str) -> str:
    """The still-encoded path below the base; refuses traversal (SPEC section 2)."""
    raw = request.raw_path.split("?", 1)[0]
    if not raw.startswith("/"):
        # RFC 9112 section 3.2.2: absolute-form is for forward proxies; this one forwards
        # only to its configured upstream, so a target naming a host is refused.
        raise BadRequest("absolute-form request targets are not accepted")
    try:
        check_path(raw)
    except InvalidPath as exc:
        raise BadRequest(str(exc)) from None
    return raw[len(base_path) :].lstrip("/")


def public_base(request: web.Request, settings: Settings) -> str:
    """The proxy's external DICOMweb base for this request (SPEC section 1)."""
    if settings.public_url:
        return settings.public_url
    scheme, host = request.scheme, request.host
    if settings.trust_forwarded:
        scheme, host = _forwarded(request, scheme, host)
    if scheme not in _SCHEMES or not _HOST.match(host):
        raise BadRequest("invalid Host header")
    return f"{scheme}://{host}{settings.base_path}"


def _forwarded(request: web.Request, scheme: str, host: str) -> tuple[str, str]:
    """RFC 7239 ``Forwarded`` first, then ``X-Forwarded-Proto/Host``."""
    if request.forwarded:
        first = request.forwarded[0]
        return first.get("proto", scheme).lower(), first.get("host", host)
    proto = request.headers.get("X-Forwarded-Proto", scheme).split(",")[0].strip().lower()
    forwarded_host = request.headers.get("X-Forwarded-Host", host).split(",")[0].strip()
    return proto, forwarded_host


@functools.lru_cache(maxsize=64)
def rewriter_for(upstream_base: str, public: str) -> Rewriter:
    """Compiled once per public base: a proxy sees few host names."""
    return Rewriter(upstream_base, public)


def build(request: web.Request, settings: Settings, *, pass_credentials: bool) -> Exchange:
    rid = request_id(request)
    relative = relative_raw_path(request, settings.base_path)
    try:
        resource = classify(unquote(relative), request.method)
    except InvalidPath as exc:
        raise BadRequest(str(exc)) from None
    # The upstream base is normalised once (no trailing slash); path and query are
    # passed on exactly as the client encoded them.
    target = f"{settings.upstream_url}/{relative}"
    query = request.raw_path.partition("?")[2]
    upstream_url = URL(f"{target}?{query}" if query else target, encoded=True)
    return Exchange(
        request_id=rid,
        resource=resource,
        relative_path=relative,
        upstream_url=upstream_url,
        rewriter=rewriter_for(settings.upstream_url, public_base(request, settings)),
        client_headers=request.headers,
        peer=request.remote,
        pass_credentials=pass_credentials,
    )
