"""A real Orthanc with its DICOMweb plugin, on a free loopback port, for tests, the
benchmark and the demo.

Needs the Debian packages ``orthanc`` and ``orthanc-dicomweb`` (``make test`` installs
them).  The configuration is the one those packages ship: every file in
``/etc/orthanc/`` (the directory Debian's service starts Orthanc with), comments
stripped and merged, then only the settings in :meth:`Orthanc.overrides` changed, each
for the reason written beside it.  So the tests meet what users run: HTTP compression
on (Orthanc 1.10's default), ``OverwriteInstances`` off, ``DicomWeb.Host`` set to
``localhost``, every plugin of the package directory loaded.

Orthanc 1.10 has no option to choose the address it listens on: it binds every
interface, and its shipped ``RemoteAccessAllowed: false`` makes it refuse any client
but the loopback one.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path
from typing import Any

from harness.net import free_port
from harness.processes import stop

BINARY = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
SHIPPED_CONFIG = Path("/etc/orthanc")
# A JSON string, or a comment: strings are kept (they hold "//" in URLs).
_STRING_OR_COMMENT = re.compile(r'"(?:[^"\\]|\\.)*"|/\*.*?\*/|//[^\n]*', re.DOTALL)


def strip_comments(text: str) -> str:
    """Orthanc's configuration files are JSON with C and C++ comments."""
    return _STRING_OR_COMMENT.sub(lambda m: m.group(0) if m.group(0)[0] == '"' else "", text)


def shipped_config(directory: Path = SHIPPED_CONFIG) -> dict[str, Any]:
    """Every ``*.json`` of the package's configuration directory, merged as Orthanc
    merges them (each top-level section is defined in one file only)."""
    merged: dict[str, Any] = {}
    for path in sorted(directory.glob("*.json")):
        merged.update(json.loads(strip_comments(path.read_text())))
    return merged


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` applied; nested sections merge key by key."""
    result = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge(result[key], value)
        else:
            result[key] = value
    return result


class Orthanc:
    """Start with :meth:`start`, stop with :meth:`stop`; ``dicomweb`` is the base URL.

    ``users`` turns HTTP Basic authentication on; ``changes`` are further settings a
    caller changes from the shipped ones, and must say why where it passes them.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        users: dict[str, str] | None = None,
        changes: dict[str, Any] | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.users = users or {}
        self.changes = changes or {}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def overrides(self) -> dict[str, Any]:
        """What this server changes from the shipped configuration, and why."""
        storage = str(self.workdir / "storage")
        changed: dict[str, Any] = {
            # A throw-away database, not the system service's /var/lib/orthanc.
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            # A free port: 8042 may be taken, and several servers run at once.
            "HttpPort": self.port,
            # The DICOM listener is unused here and would bind every interface.
            "DicomServerEnabled": False,
        }
        if self.users:
            # The Basic-auth tests need an upstream that demands credentials.
            changed["AuthenticationEnabled"] = True
            changed["RegisteredUsers"] = self.users
        return merge(changed, self.changes)

    def config(self) -> dict[str, Any]:
        return merge(shipped_config(), self.overrides())

    def start(self, timeout: float = 30.0) -> Orthanc:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "orthanc.json"
        config_path.write_text(json.dumps(self.config(), indent=2))
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
            stop(self.process)
            self.process = None

    def request(
        self,
        method: str,
        path: str,
        data: bytes | None = None,
        content_type: str = "application/dicom",
        timeout: float = 30,
    ) -> bytes:
        """One REST call.  urllib sends no ``Accept-Encoding``, so answers come plain."""
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", content_type)
        if self.users:
            user, password = next(iter(self.users.items()))
            token = b64encode(f"{user}:{password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return bytes(response.read())

    def get(self, path: str) -> bytes:
        return self.request("GET", path)

    def get_json(self, path: str) -> Any:
        return json.loads(self.get(path))

    def post_json(self, path: str, payload: object, timeout: float = 60) -> Any:
        body = json.dumps(payload).encode()
        return json.loads(self.request("POST", path, body, "application/json", timeout))

    def upload(self, data: bytes) -> None:
        """Store one Part 10 instance through Orthanc's REST API (not through DICOMweb)."""
        self.request("POST", "/instances", data)

    def delete_all(self) -> None:
        for patient in self.get_json("/patients"):
            self.request("DELETE", f"/patients/{patient}")

    def instance_count(self) -> int:
        return int(self.get_json("/statistics")["CountInstances"])

    def study_instance_count(self, study_uid: str) -> int:
        """Instances Orthanc holds for one study (0 when it has none)."""
        found = self.post_json(
            "/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}}
        )
        return len(found)
