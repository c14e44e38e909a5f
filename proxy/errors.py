"""The errors the proxy itself produces, each rendered as RFC 9457 problem+json.

::

    ProxyError (500)
     ├── BadRequest (400)
     │    └── MalformedBody (400)
     ├── Unauthorized (401)
     ├── Forbidden (403)
     ├── NotFound (404)
     ├── RequestTimeout (408)
     ├── PayloadTooLarge (413)
     ├── UnsupportedMediaType (415)
     ├── RangeNotSatisfiable (416)
     ├── InsufficientStorage (507)
     ├── UpstreamError (502)
     │    ├── UpstreamUnreachable (502)
     │    ├── UpstreamInvalid (502)
     │    └── UpstreamAuthFailed (502)
     ├── UpstreamTimeout (504)
     └── ShuttingDown (503)

Library exceptions (aiohttp client errors, OS errors) are translated into this tree in
one place each: :mod:`proxy.upstream` for the upstream, the handlers for the rest.
"""

from __future__ import annotations

import json

PROBLEM_JSON = "application/problem+json"


class ProxyError(Exception):
    status = 500
    title = "Internal proxy error"

    def __init__(self, detail: str = "", *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.headers = dict(headers or {})

    def problem(self, request_id: str, instance: str = "") -> bytes:
        """The RFC 9457 document; ``instance`` is the request path without its query."""
        body: dict[str, object] = {
            "type": "about:blank",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "requestId": request_id,
        }
        if instance:
            body["instance"] = instance
        return json.dumps(body).encode()


class BadRequest(ProxyError):
    status = 400
    title = "Bad request"


class MalformedBody(BadRequest):
    title = "Malformed request body"


class Unauthorized(ProxyError):
    status = 401
    title = "Unauthorized"


class Forbidden(ProxyError):
    status = 403
    title = "Forbidden"


class NotFound(ProxyError):
    status = 404
    title = "Not found"


class RequestTimeout(ProxyError):
    """The client stopped sending its request body (``--client-timeout``)."""

    status = 408
    title = "Request timeout"


class PayloadTooLarge(ProxyError):
    status = 413
    title = "Request body too large"


class UnsupportedMediaType(ProxyError):
    status = 415
    title = "Unsupported media type"


class RangeNotSatisfiable(ProxyError):
    """RFC 9110 section 15.5.17: carries ``Content-Range: bytes */size``."""

    status = 416
    title = "Range not satisfiable"


class InsufficientStorage(ProxyError):
    status = 507
    title = "Insufficient storage"


class UpstreamError(ProxyError):
    status = 502
    title = "Bad gateway"


class UpstreamUnreachable(UpstreamError):
    title = "Upstream unreachable"


class UpstreamInvalid(UpstreamError):
    title = "Invalid upstream response"


class UpstreamAuthFailed(UpstreamError):
    """The proxy could not obtain upstream credentials (e.g. the OAuth2 token endpoint
    is unreachable or rejected the client).  The detail never carries a secret."""

    title = "Upstream authentication failed"


class UpstreamTimeout(ProxyError):
    status = 504
    title = "Upstream timeout"


class ShuttingDown(ProxyError):
    status = 503
    title = "Shutting down"
