"""Serve a prebuilt web viewer (OHIF's ``dist/``) at ``/viewer/`` (``--viewer-dir``).

What is served:

- static files of the build, with the content types browsers insist on (``.wasm``
  must be ``application/wasm`` for streaming compilation, modules need a JavaScript
  type), ``Cache-Control: public, max-age=31536000, immutable`` for content-hashed
  assets and ``no-cache`` for everything else, so a new build is picked up at once;
- the single-page-app fallback: an unknown path without a file extension
  (``/viewer/viewer?StudyInstanceUIDs=…``) gets ``index.html``;
- a generated ``app-config.js`` whose DICOMweb data source is this proxy's own public
  base, derived per request like every rewritten URL (SPEC section 1);
- OHIF builds made for the web root (``PUBLIC_URL=/``, the npm package is one) are
  moved under ``/viewer/`` on the fly: ``index.html``'s root-absolute asset links and
  ``window.PUBLIC_URL``, root-absolute ``url(/…)`` in stylesheets, and webpack's public
  path in the bundles that set it.  Patched files are read once and kept in memory
  (about 17 MiB for OHIF 3.13); the others are sent from disk.

Paths that climb out of the directory (``..``, encoded or not, symlinks pointing out)
are refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import mimetypes
import re
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from proxy.dicomweb.uri import InvalidPath, check_path
from proxy.errors import BadRequest, NotFound
from proxy.exchange import public_base
from proxy.settings import Settings
from proxy.state import VIEWER

PREFIX = "/viewer"

IMMUTABLE = "public, max-age=31536000, immutable"
NO_CACHE = "no-cache"

_TYPES = {
    ".wasm": "application/wasm",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".html": "text/html; charset=utf-8",
    ".svg": "image/svg+xml",
    ".woff2": "font/woff2",
    ".woff": "font/woff",
    ".ico": "image/x-icon",
    ".onnx": "application/octet-stream",
}
# webpack's content hash as the build names it: ``app.bundle.0f6159c501addfe9.js``,
# ``0ddf166f7a343eda.wasm``.
_HASHED = re.compile(r"(^|[.\-_])[0-9a-f]{12,}\.[A-Za-z0-9]+$")
# What a root-based build says, and what it must say under the prefix.
_INDEX_LINK = re.compile(rb'((?:href|src)=")/(?!/)')
_INDEX_PUBLIC_URL = re.compile(rb"""(window\.PUBLIC_URL\s*=\s*)(["'])/\2""")
_WEBPACK_PUBLIC_PATH = re.compile(rb"""(__webpack_require__\.p\s*=\s*)(["'])/\2""")
_CSS_URL = re.compile(rb"""(url\(\s*["']?)/(?!/)""")
# A bundle larger than this is served as it is, never held in memory.
_MAX_PATCHED = 64 * 1024**2


@dataclass
class ViewerFiles:
    """The viewer directory, with the few files that need patching held in memory."""

    root: Path
    settings: Settings
    prefix: str = PREFIX
    _patched: dict[Path, tuple[bytes, str] | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = self.root.resolve()

    def locate(self, relative: str) -> Path | None:
        """The file for ``relative`` inside the root, or None; never a path outside it."""
        candidate = (self.root / relative).resolve()
        if not candidate.is_relative_to(self.root) or not candidate.is_file():
            return None
        return candidate

    async def patched(self, path: Path) -> tuple[bytes, str] | None:
        """The file moved under the prefix and its ETag, or None when it needs no change."""
        if path not in self._patched:
            self._patched[path] = await asyncio.to_thread(self._patch, path)
        return self._patched[path]

    def _patch(self, path: Path) -> tuple[bytes, str] | None:
        if path.suffix not in {".html", ".js", ".css"} or path.stat().st_size > _MAX_PATCHED:
            return None
        original = path.read_bytes()
        base = self.prefix.encode() + b"/"
        if path.suffix == ".html":
            body = _INDEX_LINK.sub(rb"\1" + base, original)
            body = _INDEX_PUBLIC_URL.sub(rb"\1\2" + base + rb"\2", body)
        elif path.suffix == ".css":
            body = _CSS_URL.sub(rb"\1" + base, original)
        else:
            body = _WEBPACK_PUBLIC_PATH.sub(rb"\1\2" + base + rb"\2", original)
        if body == original:
            return None
        return body, f'"{hashlib.sha256(body).hexdigest()[:32]}"'


def add_routes(app: web.Application, settings: Settings, root: str) -> None:
    """Mount the viewer in ``root``; ``create_app`` calls this for ``--viewer-dir``."""
    app[VIEWER] = ViewerFiles(Path(root), settings)
    app.router.add_get(PREFIX, redirect_to_index)
    app.router.add_get(PREFIX + "/app-config.js", app_config)
    app.router.add_get(PREFIX + "/{tail:.*}", static_file)


async def redirect_to_index(request: web.Request) -> web.StreamResponse:
    raise web.HTTPPermanentRedirect(PREFIX + "/")


async def static_file(request: web.Request) -> web.StreamResponse:
    viewer = request.app[VIEWER]
    relative = _relative_path(request)
    path = viewer.locate(relative) if relative else None
    if path is None:
        if _looks_like_asset(relative):
            raise NotFound("no such viewer file")
        path = viewer.locate("index.html")
        if path is None:
            raise NotFound("the viewer has no index.html")
    headers = {"Cache-Control": cache_control(path), "Content-Type": content_type(path)}
    patched = await viewer.patched(path)
    if patched is None:
        return web.FileResponse(path, headers=headers)
    body, etag = patched
    headers["ETag"] = etag
    if etag in request.headers.get("If-None-Match", ""):
        return web.Response(
            status=304, headers={"ETag": etag, "Cache-Control": headers["Cache-Control"]}
        )
    return web.Response(body=body, headers=headers)


def _relative_path(request: web.Request) -> str:
    """The path below ``/viewer/``, refusing traversal as the DICOMweb routes do."""
    raw = request.raw_path.split("?", 1)[0]
    try:
        check_path(raw)
    except InvalidPath as exc:
        raise BadRequest(str(exc)) from None
    return request.match_info["tail"]


def _looks_like_asset(relative: str) -> bool:
    """A missing ``x.js`` is a 404; a missing ``viewer`` is a client-side route."""
    return "." in relative.rsplit("/", 1)[-1]


def content_type(path: Path) -> str:
    known = _TYPES.get(path.suffix.lower())
    if known:
        return known
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"


def cache_control(path: Path) -> str:
    """Hashed names never change content; anything else must be revalidated."""
    return IMMUTABLE if _HASHED.search(path.name) else NO_CACHE


# -- the generated app-config.js ------------------------------------------------------


async def app_config(request: web.Request) -> web.StreamResponse:
    viewer = request.app[VIEWER]
    config = viewer_config(public_base(request, viewer.settings), viewer.prefix)
    body = "/** Generated by dicomweb-proxy for this proxy's DICOMweb base. */\n"
    body += f"window.config = {json.dumps(config, indent=2)};\n"
    return web.Response(
        text=body,
        content_type="text/javascript",
        charset="utf-8",
        headers={"Cache-Control": NO_CACHE},
    )


def viewer_config(dicomweb_base: str, prefix: str) -> dict[str, object]:
    """OHIF 3.x ``window.config`` with one DICOMweb data source: this proxy.

    The shape follows the build's own ``app-config.js`` (``config/default.js``).
    """
    return {
        "name": "dicomweb-proxy",
        "routerBasename": prefix,
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 3,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "maxNumRequests": {"interaction": 100, "thumbnail": 75, "prefetch": 25},
        "defaultDataSourceName": "dicomweb",
        "dataSources": [
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": "dicomweb",
                "configuration": {
                    "friendlyName": "dicomweb-proxy",
                    "name": "dicomweb-proxy",
                    "wadoUriRoot": dicomweb_base,
                    "qidoRoot": dicomweb_base,
                    "wadoRoot": dicomweb_base,
                    "qidoSupportsIncludeField": True,
                    "supportsReject": False,
                    "imageRendering": "wadors",
                    "thumbnailRendering": "wadors",
                    "enableStudyLazyLoad": True,
                    "supportsFuzzyMatching": False,
                    "supportsWildcard": True,
                    "staticWado": False,
                    "singlepart": "bulkdata,video",
                    "bulkDataURI": {"enabled": True},
                    "dicomUploadEnabled": False,
                    "omitQuotationForMultipartRequest": True,
                },
            }
        ],
    }
