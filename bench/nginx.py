"""nginx ``proxy_cache`` in front of the same origin: the baseline of SPEC section 8.

Debian's nginx runs as an unprivileged foreground process (``nobody`` when the
benchmark runs as root) with a generated config in its own temporary prefix, tuned the
way an operator would for immutable DICOM: upstream keepalive, ``sendfile``,
``proxy_cache_lock`` (single flight), a key that includes ``Accept`` (WADO-RS
negotiates by it), every 200 cached for a day whatever the origin's caching headers
say, and ``X-Cache-Status`` so the harness can check it is measuring hits.

``tcp_nopush`` stays off (nginx's default): with it on, responses of some sizes
(64 KiB, 100 KiB JSON) stalled 40 ms each on loopback (TCP_CORK meeting delayed ACKs),
which would have made the baseline look ~60x slower than it is.

Content coding is set up as the proxy does it, so both are measured doing the same
job for the same clients: towards the origin, ``gzip`` is asked for JSON/XML and
nothing for bulk data (by the request's ``Accept``; the client's own
``Accept-Encoding`` is not passed on); the cache holds what the origin sent, and
``gunzip on`` decodes it for a client that does not accept gzip.  A gzip-accepting
client's metadata hit is then the stored gzip body by ``sendfile``, as an operator's
nginx in front of a compressing archive serves it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from harness.processes import stop

BINARY = shutil.which("nginx") or "/usr/sbin/nginx"

CONFIG = """\
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    client_max_body_size 0;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    proxy_cache_path {prefix}/cache levels=1:2 keys_zone=dicom:64m max_size=20g
                     inactive=1d use_temp_path=off;
    upstream origin {{
        server 127.0.0.1:{origin_port};
        keepalive 64;
    }}
    map $http_accept $origin_coding {{
        ~*(json|xml) gzip;
        default "";
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache dicom;
            proxy_cache_key "$request_uri|$http_accept";
            proxy_cache_valid 200 1d;
            proxy_set_header Accept-Encoding $origin_coding;
            gunzip on;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 60s;
            proxy_cache_lock_age 60s;
            proxy_ignore_headers Cache-Control Expires Set-Cookie Vary;
            proxy_read_timeout 120s;
            add_header X-Cache-Status $upstream_cache_status always;
        }}
        # The same proxying without a cache: nginx's pass-through, for reference.
        location /nocache/ {{
            proxy_pass http://origin/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Accept-Encoding $origin_coding;
            gunzip on;
            proxy_read_timeout 120s;
        }}
    }}
}}
"""


def render(prefix: Path, *, port: int, origin_port: int, workers: int = 1) -> str:
    return CONFIG.format(prefix=prefix, port=port, origin_port=origin_port, workers=workers)


class Nginx:
    """``start()`` writes the config under its own temporary prefix (readable by the
    unprivileged user, unlike the harness's own 0700 scratch directory) and runs nginx
    in the foreground; ``stop()`` removes the prefix."""

    def __init__(self, *, port: int, origin_port: int, workers: int = 1) -> None:
        self._scratch = tempfile.TemporaryDirectory(prefix="bench-nginx-")
        prefix = self.prefix = Path(self._scratch.name)
        self.port = port
        self.config = render(prefix, port=port, origin_port=origin_port, workers=workers)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Nginx:
        for sub in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi", "cache"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        config = self.prefix / "nginx.conf"
        config.write_text(self.config)
        command = [BINARY, "-e", str(self.prefix / "error.log"), "-c", str(config)]
        command += ["-p", str(self.prefix), "-g", "daemon off;"]
        self.process = subprocess.Popen(_unprivileged(self.prefix) + command)
        return self

    def pids(self) -> list[int]:
        """Whose CPU time is nginx's: the workers (the master only forks and waits)."""
        return self.worker_pids()

    def worker_pids(self) -> list[int]:
        if self.process is None:
            return []
        return _children(self.process.pid)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None
        self._scratch.cleanup()


def _unprivileged(prefix: Path) -> list[str]:
    """As root, drop to ``nobody`` (owning the prefix) so nginx never runs privileged."""
    if os.geteuid() != 0:
        return []
    nobody = pwd.getpwnam("nobody")
    for path in [prefix, *prefix.rglob("*")]:
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    return [
        "setpriv",
        f"--reuid={nobody.pw_uid}",
        f"--regid={nobody.pw_gid}",
        "--clear-groups",
        "--",
    ]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found
