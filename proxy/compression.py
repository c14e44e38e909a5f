"""Whether a response goes to the client gzipped (SPEC section 2).

JSON and XML answers (metadata, QIDO results) shrink to a fraction; multipart, images
and DICOM bulk data do not, and are never compressed by the proxy.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.dicomweb.coding import accepts_gzip
from proxy.dicomweb.media import parse_media_type
from proxy.dicomweb.rewrite import carries_urls


def should_compress(
    request: web.Request,
    content_type: str,
    upstream: CIMultiDict[str] | CIMultiDictProxy[str] | Mapping[str, str],
) -> bool:
    """gzip JSON and XML towards clients that accept it, unless the body is coded
    already (in a coding the proxy could not decode)."""
    if "Content-Encoding" in upstream or request.method == "HEAD":
        return False
    return compressible(content_type) and accepts_gzip(request.headers.get("Accept-Encoding"))


def compressible(content_type: str) -> bool:
    """JSON, XML and WADL answers; never multipart, images or DICOM bulk data."""
    multipart = parse_media_type(content_type).main.startswith("multipart/")
    return not multipart and carries_urls(content_type)
