"""Fetch the prebuilt OHIF viewer from its npm package, once, into a local cache.

``npm pack @ohif/app@<version>`` downloads the published tarball, whose ``dist/`` is
the production build; it is extracted to ``<cache>/<version>/dist`` and reused from
then on.  The version is pinned so the demo and the tests see the same viewer.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

OHIF_PACKAGE = "@ohif/app"
OHIF_VERSION = "3.13.2"
# <repository>/.dicomweb-proxy/viewer: survives between runs, ignored by git.
DEFAULT_CACHE = Path(__file__).resolve().parents[1] / ".dicomweb-proxy" / "viewer"


class FetchError(RuntimeError):
    """npm is missing or the package could not be fetched."""


def viewer_dist(cache: Path = DEFAULT_CACHE, version: str = OHIF_VERSION) -> Path:
    """The extracted ``dist/`` of ``@ohif/app@version``, fetched on first use."""
    dist = cache / version / "dist"
    if (dist / "index.html").is_file():
        return dist
    npm = shutil.which("npm")
    if npm is None:
        raise FetchError("npm is not installed (Debian: apt-get install nodejs npm)")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".fetch-") as work:
        extracted = _pack_and_extract(npm, f"{OHIF_PACKAGE}@{version}", Path(work))
        dist.parent.mkdir(parents=True, exist_ok=True)
        # Appears whole or not at all: a run interrupted mid-download leaves no half dist.
        try:
            extracted.rename(dist)
        except OSError:
            if not (dist / "index.html").is_file():
                raise
    return dist


def _pack_and_extract(npm: str, spec: str, work: Path) -> Path:
    result = subprocess.run(
        [npm, "pack", spec, "--pack-destination", str(work), "--silent"],
        capture_output=True,
        text=True,
        check=False,
    )
    tarballs = list(work.glob("*.tgz"))
    if result.returncode != 0 or not tarballs:
        raise FetchError(f"npm pack {spec} failed: {result.stderr.strip()[-500:]}")
    with tarfile.open(tarballs[0]) as tar:
        tar.extractall(work, filter="data")
    dist = work / "package" / "dist"
    if not (dist / "index.html").is_file():
        raise FetchError(f"{spec} has no dist/index.html")
    return dist
