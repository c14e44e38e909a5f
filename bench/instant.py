"""An origin that answers instantly: every GET gets one fixed body.

``python -m bench.instant LISTEN_PORT BODY_FILE CONTENT_TYPE``.  Section 2 fills it with
Orthanc's own study-metadata answer (Orthanc's URLs inside, so the proxy rewrites as much
as it does in front of Orthanc) and measures the latency the proxy adds in front of it:
Orthanc's time for that request varies by milliseconds from one request to the next and
from one connection to another, which buries a difference of a millisecond or two.
"""

from __future__ import annotations

import sys
from pathlib import Path

from aiohttp import web


def app(body: bytes, content_type: str) -> web.Application:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=body, headers={"Content-Type": content_type})

    application = web.Application()
    application.router.add_get("/{tail:.*}", answer)
    return application


if __name__ == "__main__":
    port, body_file, content_type = sys.argv[1:4]
    served = app(Path(body_file).read_bytes(), content_type)
    web.run_app(served, host="127.0.0.1", port=int(port), print=None, access_log=None)
