"""``--viewer-dir``: static files, SPA fallback, caching, traversal, generated config."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from yarl import URL

from proxy.app import create_app
from proxy.settings import Settings
from proxy.viewer import IMMUTABLE, NO_CACHE, viewer_config

Client = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[Client]]

# What a root-based OHIF build looks like, in miniature.
INDEX = (
    b'<html><head><script>window.PUBLIC_URL="/"</script>'
    b'<link rel="manifest" href="/manifest.json"><script src="/app-config.js"></script>'
    b'<script defer src="/app.bundle.0f6159c501addfe9.js"></script>'
    b'<a href="//cdn.example/x">x</a></head></html>'
)
BUNDLE = b'(() => { __webpack_require__.p = "/"; })(); fetch("/dicom-web")'
CSS = b"@font-face{src:url(/a34f9d1faa5f3315.woff2)} .x{background:url(//cdn/y.png)}"


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    root = tmp_path / "dist"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_bytes(INDEX)
    (root / "app-config.js").write_text("window.config = {from: 'dist'};")
    (root / "app.bundle.0f6159c501addfe9.js").write_bytes(BUNDLE)
    (root / "7071.bundle.de8df9d95b2ba245.js").write_bytes(b"console.log(1)")
    (root / "app.bundle.css").write_bytes(CSS)
    (root / "0ddf166f7a343eda.wasm").write_bytes(b"\0asm\1\0\0\0")
    (root / "init-service-worker.mjs").write_bytes(b"export {}")
    (root / "manifest.json").write_text("{}")
    (root / "assets" / "favicon.ico").write_bytes(b"\0\0\1\0")
    (tmp_path / "secret.txt").write_text("outside")
    (root / "escape.txt").symlink_to(tmp_path / "secret.txt")
    return root


@pytest.fixture
def viewer_client(aiohttp_client: Any, dist: Path, tmp_path: Path) -> MakeClient:
    async def make(**overrides: Any) -> Client:
        settings = Settings(
            upstream_url="http://127.0.0.1:9/dicom-web",
            data_dir=str(tmp_path / "data"),
            viewer_dir=str(dist),
        )
        client: Client = await aiohttp_client(
            create_app(dataclasses.replace(settings, **overrides))
        )
        return client

    return make


@pytest.mark.parametrize(
    ("path", "content_type", "cache_control"),
    [
        ("0ddf166f7a343eda.wasm", "application/wasm", IMMUTABLE),
        ("7071.bundle.de8df9d95b2ba245.js", "text/javascript", IMMUTABLE),
        ("init-service-worker.mjs", "text/javascript", NO_CACHE),
        ("app.bundle.css", "text/css", NO_CACHE),
        ("manifest.json", "application/json", NO_CACHE),
        ("assets/favicon.ico", "image/x-icon", NO_CACHE),
        ("", "text/html", NO_CACHE),
        ("index.html", "text/html", NO_CACHE),
    ],
)
async def test_static_types_and_caching(
    viewer_client: MakeClient, path: str, content_type: str, cache_control: str
) -> None:
    client = await viewer_client()
    response = await client.get("/viewer/" + path)
    assert response.status == 200
    assert response.headers["Content-Type"].split(";")[0] == content_type
    assert response.headers["Cache-Control"] == cache_control
    # Read to the end: a FileResponse cut off by the test's teardown may close its file
    # only after the loop closed (a ResourceWarning in whichever test runs next).
    await response.read()


async def test_unknown_route_falls_back_to_index(viewer_client: MakeClient) -> None:
    client = await viewer_client()
    response = await client.get("/viewer/viewer?StudyInstanceUIDs=1.2.3")
    assert response.status == 200
    assert response.headers["Cache-Control"] == NO_CACHE
    assert b"window.PUBLIC_URL" in await response.read()


async def test_missing_asset_is_404_not_index(viewer_client: MakeClient) -> None:
    client = await viewer_client()
    response = await client.get("/viewer/9999.bundle.0123456789abcdef.js")
    assert response.status == 404
    assert response.headers["Content-Type"] == "application/problem+json"


async def test_bare_prefix_redirects(viewer_client: MakeClient) -> None:
    client = await viewer_client()
    response = await client.get("/viewer", allow_redirects=False)
    assert response.status == 308
    assert response.headers["Location"] == "/viewer/"


@pytest.mark.parametrize(
    "raw_path",
    [
        "/viewer/../secret.txt",
        "/viewer/%2e%2e/secret.txt",
        "/viewer/assets/%2E%2E/%2E%2E/secret.txt",
        "/viewer/..%2fsecret.txt",
    ],
)
async def test_traversal_refused(viewer_client: MakeClient, raw_path: str) -> None:
    client = await viewer_client()
    # encoded=True: send the path as written, not as a client would normalise it.
    url = URL(str(client.make_url("")).rstrip("/") + raw_path, encoded=True)
    response = await client.session.get(url)
    assert response.status == 400
    assert b"outside" not in await response.read()


async def test_symlink_out_of_the_directory_not_served(viewer_client: MakeClient) -> None:
    client = await viewer_client()
    response = await client.get("/viewer/escape.txt")
    assert response.status == 404
    assert b"outside" not in await response.read()


async def test_root_based_build_is_moved_under_the_prefix(viewer_client: MakeClient) -> None:
    client = await viewer_client()
    index = await (await client.get("/viewer/")).read()
    assert b'window.PUBLIC_URL="/viewer/"' in index
    assert b'href="/viewer/manifest.json"' in index
    assert b'src="/viewer/app-config.js"' in index
    assert b'src="/viewer/app.bundle.0f6159c501addfe9.js"' in index
    assert b'href="//cdn.example/x"' in index  # protocol-relative: not ours
    bundle = await client.get("/viewer/app.bundle.0f6159c501addfe9.js")
    body = await bundle.read()
    assert b'__webpack_require__.p = "/viewer/"' in body
    assert b'fetch("/dicom-web")' in body  # only the public path changes
    assert bundle.headers["Cache-Control"] == IMMUTABLE
    css = await (await client.get("/viewer/app.bundle.css")).read()
    assert b"url(/viewer/a34f9d1faa5f3315.woff2)" in css
    assert b"url(//cdn/y.png)" in css


async def test_app_config_points_at_this_proxy(viewer_client: MakeClient) -> None:
    client = await viewer_client()
    response = await client.get("/viewer/app-config.js", headers={"Host": "viewer.example:8443"})
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/javascript")
    assert response.headers["Cache-Control"] == NO_CACHE
    config = _config_of(await response.text())
    source = config["dataSources"][0]["configuration"]
    assert config["routerBasename"] == "/viewer"
    assert source["qidoRoot"] == source["wadoRoot"] == "http://viewer.example:8443/dicom-web"
    assert source["supportsFuzzyMatching"] is False
    assert source["supportsWildcard"] is True
    assert source["imageRendering"] == source["thumbnailRendering"] == "wadors"
    assert source["bulkDataURI"] == {"enabled": True}
    assert source["omitQuotationForMultipartRequest"] is True


async def test_app_config_uses_public_url_and_base_path(viewer_client: MakeClient) -> None:
    client = await viewer_client(
        base_path="/dicomweb", public_url="https://pacs.example/edge/dicomweb"
    )
    config = _config_of(await (await client.get("/viewer/app-config.js")).text())
    assert config["dataSources"][0]["configuration"]["wadoRoot"] == (
        "https://pacs.example/edge/dicomweb"
    )


async def test_app_config_refuses_a_forged_host(viewer_client: MakeClient) -> None:
    client = await viewer_client()
    response = await client.get("/viewer/app-config.js", headers={"Host": "evil\"'</script>"})
    assert response.status == 400


async def test_patched_files_revalidate_with_etag(viewer_client: MakeClient) -> None:
    client = await viewer_client()
    first = await client.get("/viewer/index.html")
    etag = first.headers["ETag"]
    again = await client.get("/viewer/index.html", headers={"If-None-Match": etag})
    assert again.status == 304
    assert again.headers["Cache-Control"] == NO_CACHE


def test_viewer_config_is_json_serialisable() -> None:
    json.dumps(viewer_config("http://x/dicom-web", "/viewer"))


def _config_of(script: str) -> Any:
    start = script.index("window.config = ") + len("window.config = ")
    return json.loads(script[start:].rstrip().rstrip(";"))
