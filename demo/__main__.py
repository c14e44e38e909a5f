"""``make demo``: the proxy with the OHIF viewer, in front of a local Orthanc or ``UPSTREAM``.

Without ``UPSTREAM``: a throw-away Orthanc with its DICOMweb plugin on loopback, loaded
with a synthetic two-series CT phantom.  With ``UPSTREAM=http://pacs/dicom-web``: that
origin, untouched.  Either way the pinned OHIF build is fetched once (``demo.ohif``)
and the proxy serves it at ``/viewer/``.  Ctrl-C stops everything.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from demo.ohif import viewer_dist
from harness.dicomgen import PHANTOM_PATIENT, make_study
from harness.orthanc import Orthanc
from proxy.settings import parse_listen

SERIES, SLICES, SIZE = 2, 20, 256


def main() -> int:
    # SIGTERM (a supervisor, `kill`) cleans up like Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    listen = parse_listen(os.environ.get("LISTEN", "127.0.0.1:8080"))
    upstream = os.environ.get("UPSTREAM", "").strip()
    print("fetching the OHIF viewer (cached after the first run) ...", flush=True)
    dist = viewer_dist()
    workdir = Path(tempfile.mkdtemp(prefix="dicomweb-proxy-demo-"))
    orthanc = None
    try:
        study_uid = None
        if not upstream:
            orthanc, study_uid = start_orthanc(workdir)
            upstream = orthanc.dicomweb
        proxy = start_proxy(upstream, listen, dist, workdir)
        try:
            print_banner(f"http://{listen}", study_uid)
            return proxy.wait()
        except KeyboardInterrupt:
            return 0
        finally:
            stop(proxy)
    finally:
        if orthanc is not None:
            orthanc.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def start_orthanc(workdir: Path) -> tuple[Orthanc, str]:
    """A local Orthanc holding one synthetic phantom study; returns it and the study UID."""
    print("starting a local Orthanc with its DICOMweb plugin ...", flush=True)
    orthanc = Orthanc(workdir / "orthanc").start()
    study = make_study(SERIES, SLICES, rows=SIZE, columns=SIZE, phantom=True, **PHANTOM_PATIENT)
    for _, _, data in study.instances:
        orthanc.upload(data)
    print(f"loaded a synthetic CT study: {SERIES} series x {SLICES} slices", flush=True)
    return orthanc, study.uid


def start_proxy(upstream: str, listen: str, dist: Path, workdir: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "proxy", "serve", "--upstream-url", upstream]
    command += ["--listen", listen, "--viewer-dir", str(dist)]
    command += ["--data-dir", str(workdir / "proxy")]
    process = subprocess.Popen(command)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the proxy exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://{listen}/healthz", timeout=2):
                return process
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    stop(process)
    raise SystemExit("the proxy did not start within 30 s")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def print_banner(base: str, study_uid: str | None) -> None:
    viewer = f"{base}/viewer/"
    if study_uid:
        viewer += f"viewer?StudyInstanceUIDs={study_uid}"
    print(
        "\n"
        f"  viewer:    {viewer}\n"
        f"  DICOMweb:  {base}/dicom-web\n"
        f"  try:       curl -s '{base}/dicom-web/studies?includefield=StudyDescription'\n"
        "\n"
        "Ctrl-C stops everything.\n",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
