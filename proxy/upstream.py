"""The one client session towards the upstream, and the translation of its errors.

Timeouts (SPEC section 1, ``--upstream-timeout``): connecting and waiting for the first
byte of the response are bounded; a body may take as long as it needs as long as it
never stalls for longer than the same idle timeout.  There is no total deadline: a
2 GiB study retrieve takes minutes.
"""

from __future__ import annotations

import contextlib
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator, Mapping

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from proxy.errors import UpstreamError, UpstreamInvalid, UpstreamTimeout, UpstreamUnreachable
from proxy.settings import Settings

CHUNK = 256 * 1024

# Told of every upstream request: its status (or "error" / "timeout") and the seconds
# until the response headers arrived.  Metrics and the access log listen here.
UpstreamObserver = Callable[[str, float], None]


class Upstream:
    """Owns the pooled :class:`aiohttp.ClientSession` and the upstream base URL."""

    def __init__(self, settings: Settings) -> None:
        self.base = URL(settings.upstream_url)
        self.settings = settings
        self.observers: list[UpstreamObserver] = []
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=settings.upstream_timeout,
            sock_read=settings.upstream_timeout,
        )
        connector = aiohttp.TCPConnector(
            limit=settings.upstream_connections,
            limit_per_host=settings.upstream_connections,
            ssl=_ssl_context(settings),
            keepalive_timeout=30,
        )
        # auto_decompress off: Content-Encoding passes through to the client untouched.
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    @contextlib.asynccontextmanager
    async def request(
        self,
        method: str,
        url: URL,
        headers: Mapping[str, str] | CIMultiDict[str],
        data: AsyncIterable[bytes] | bytes | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send one request; yield the response with its headers read.

        Every aiohttp failure is translated here, once, into the proxy's error tree.
        """
        started = time.perf_counter()
        try:
            with translate_errors():
                response = await self.session.request(
                    method, url, headers=headers, data=data, allow_redirects=False
                )
        except UpstreamError as exc:
            self._observe("timeout" if isinstance(exc, UpstreamTimeout) else "error", started)
            raise
        self._observe(str(response.status), started)
        try:
            yield response
        finally:
            response.release()

    def _observe(self, status: str, started: float) -> None:
        elapsed = time.perf_counter() - started
        for observer in self.observers:
            observer(status, elapsed)

    async def close(self) -> None:
        await self.session.close()


async def iter_body(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The response body in chunks; a short or broken body raises UpstreamInvalid.

    aiohttp checks ``Content-Length`` and chunked framing and raises
    ``ClientPayloadError`` when the connection drops early; a close-delimited body that
    stops early cannot be told from a complete one, which is why the cache also checks
    multipart closing boundaries.
    """
    with translate_errors():
        async for chunk in response.content.iter_chunked(CHUNK):
            yield chunk


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    try:
        yield
    except UpstreamError:
        raise
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise UpstreamTimeout("the upstream did not answer in time") from exc
    except aiohttp.ClientConnectorError as exc:
        raise UpstreamUnreachable(f"cannot connect to the upstream: {exc.strerror}") from exc
    except aiohttp.ClientPayloadError as exc:
        raise UpstreamInvalid("the upstream response body was cut short") from exc
    except aiohttp.ServerDisconnectedError as exc:
        raise UpstreamInvalid("the upstream closed the connection") from exc
    except aiohttp.ClientResponseError as exc:
        raise UpstreamInvalid(f"invalid upstream response: {exc.message}") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise UpstreamUnreachable(f"upstream connection failed: {type(exc).__name__}") from exc


def _ssl_context(settings: Settings) -> ssl.SSLContext | bool:
    if settings.upstream_insecure:
        return False
    if settings.upstream_ca_file:
        return ssl.create_default_context(cafile=settings.upstream_ca_file)
    return True
