"""A real Orthanc with its DICOMweb plugin, on a free loopback port, for tests and demos.

Needs the Debian packages ``orthanc`` and ``orthanc-dicomweb`` (``make test`` installs
them).  Each server gets a throw-away storage directory and is stopped by its owner.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

BINARY = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Orthanc:
    """Start with :meth:`start`, stop with :meth:`stop`; ``dicomweb`` is the base URL."""

    def __init__(self, workdir: Path, *, users: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.users = users or {}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def config(self) -> dict[str, object]:
        storage = self.workdir / "storage"
        return {
            "Name": "dicomweb-proxy-test",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.port,
            "HttpBindAddress": "127.0.0.1",
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(self.users),
            "RegisteredUsers": self.users,
            "DicomServerEnabled": False,
            "DicomPort": free_port(),
            "HttpCompressionEnabled": False,
            "KeepAlive": True,
            "StableAge": 1,
            "OverwriteInstances": True,
            "Plugins": [PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
        }

    def start(self, timeout: float = 30.0) -> Orthanc:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "orthanc.json"
        config_path.write_text(json.dumps(self.config()))
        with open(self.workdir / "orthanc.log", "wb") as log:
            self.process = subprocess.Popen(
                [BINARY, str(config_path)], stdout=log, stderr=subprocess.STDOUT
            )
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited; see {self.workdir / 'orthanc.log'}")
            try:
                self.get("/system")
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.05)
        raise RuntimeError("Orthanc did not become ready")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def _request(
        self,
        method: str,
        path: str,
        data: bytes | None = None,
        content_type: str = "application/dicom",
    ) -> bytes:
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", content_type)
        if self.users:
            user, password = next(iter(self.users.items()))
            token = b64encode(f"{user}:{password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=30) as response:
            return bytes(response.read())

    def get(self, path: str) -> bytes:
        return self._request("GET", path)

    def get_json(self, path: str) -> object:
        return json.loads(self.get(path))

    def upload(self, data: bytes) -> None:
        """Store one Part 10 instance through Orthanc's REST API (not through DICOMweb)."""
        self._request("POST", "/instances", data)

    def delete_all(self) -> None:
        for patient in self.get_json("/patients"):  # type: ignore[union-attr]
            self._request("DELETE", f"/patients/{patient}")

    def instance_count(self) -> int:
        stats = self.get_json("/statistics")
        return int(stats["CountInstances"])  # type: ignore[index]
