"""The one client session towards the upstream, and the translation of its errors.

Timeouts (SPEC section 1, ``--upstream-timeout``): connecting and waiting for the first
byte of the response are bounded; a body may take as long as it needs as long as it
never stalls for longer than the same idle timeout.  There is no total deadline: a
2 GiB study retrieve takes minutes.

Credentials (SPEC section 4): with a provider, every request (the readiness probe
included) is handed to the provider just before it is sent (an ``Authorization``
header, or a SigV4 signature over the whole request); a refusal (401, and 403 for
SigV4) makes the provider renew its credential once, and a request whose body can be
sent again is retried with it.
"""

from __future__ import annotations

import contextlib
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator, Mapping

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.auth.credentials import Credentials, Outgoing
from proxy.dicomweb import coding
from proxy.dicomweb.ending import end_check
from proxy.errors import UpstreamError, UpstreamInvalid, UpstreamTimeout, UpstreamUnreachable
from proxy.settings import Settings
from proxy.streams import read_at_most

CHUNK = 256 * 1024
# Per-connection read buffer: with aiohttp's 64 KiB default a 512 KiB body makes the
# reader pause and resume the socket several times per response.
READ_BUFFER = 1024 * 1024

Body = AsyncIterable[bytes] | bytes
# Called once per attempt, returning a fresh body (a spooled STOW batch): such a
# request can be sent again after a 401, and SigV4 hashes its body.
BodyFactory = Callable[[], Body]


class Once:
    """The factory of a body that can be read only once (a client's request body): the
    request is not sent again after a 401, and SigV4 signs it ``UNSIGNED-PAYLOAD``."""

    replayable = False

    def __init__(self, body: Body) -> None:
        self._body = body

    def __call__(self) -> Body:
        return self._body


def replayable(body: BodyFactory | None) -> bool:
    """Whether the request can be sent again: no body, or a factory of fresh ones."""
    return getattr(body, "replayable", True)


# Told of every upstream request: its status (or "error" / "timeout") and the seconds
# until the response headers arrived.  Metrics and the access log listen here.
UpstreamObserver = Callable[[str, float], None]


class Upstream:
    """Owns the pooled :class:`aiohttp.ClientSession` and the upstream base URL."""

    def __init__(self, settings: Settings, credentials: Credentials | None = None) -> None:
        self.base = URL(settings.upstream_url)
        self.settings = settings
        self.credentials = credentials
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
        # auto_decompress off: codings are decoded by iter_body, which also tells a
        # coding it cannot decode (relayed as it came) from one it can.
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),
            read_bufsize=READ_BUFFER,
        )

    @contextlib.asynccontextmanager
    async def request(
        self,
        method: str,
        url: URL,
        headers: Mapping[str, str] | CIMultiDict[str],
        body: BodyFactory | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send one request; yield the response with its headers read.

        ``body`` makes the request's body, once per attempt: a factory of fresh bodies
        can be sent again after a 401, a body wrapped in :class:`Once` cannot.  Every
        aiohttp failure is translated here, once, into the proxy's error tree.
        """
        response = await self._send(method, url, headers, body)
        try:
            yield response
        finally:
            response.release()

    async def _send(
        self,
        method: str,
        url: URL,
        headers: Mapping[str, str] | CIMultiDict[str],
        body: BodyFactory | None,
    ) -> aiohttp.ClientResponse:
        """One attempt, and a second one after a refusal (401; 403 for SigV4) when the
        credential was renewed."""
        sent, response = await self._attempt(method, url, headers, body)
        credentials = self.credentials
        if credentials is None or sent is None or not credentials.refused(response.status):
            return response
        try:
            # Renew even when the body cannot be replayed: the next request benefits.
            renewed = await credentials.renew(sent)
        except BaseException:
            response.release()
            raise
        if not renewed or not replayable(body):
            return response
        response.release()
        return (await self._attempt(method, url, headers, body))[1]

    async def _attempt(
        self,
        method: str,
        url: URL,
        headers: Mapping[str, str] | CIMultiDict[str],
        body: BodyFactory | None,
    ) -> tuple[str | None, aiohttp.ClientResponse]:
        """Send once; returns what the provider said it sent, and the response."""
        sent = None
        if self.credentials is not None or "Accept-Encoding" not in headers:
            headers = CIMultiDict(headers)  # the caller's mapping is never changed
            # Without Accept-Encoding an origin may pick any coding (RFC 9110 12.5.3).
            headers.setdefault("Accept-Encoding", coding.GZIP_TEXT)
            if self.credentials is not None:
                # Last step before sending: a SigV4 signature is only valid for minutes.
                outgoing = Outgoing(method, url, headers, body)
                sent = await self.credentials.apply(outgoing)
                url = outgoing.url
        data = body() if body is not None else None
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
        return sent, response

    def _observe(self, status: str, started: float) -> None:
        elapsed = time.perf_counter() - started
        for observer in self.observers:
            observer(status, elapsed)

    def probe(self) -> contextlib.AbstractAsyncContextManager[aiohttp.ClientResponse]:
        """One QIDO-RS query for at most one study with the configured credential: the
        cheapest real round trip (``check`` and ``/readyz``)."""
        url = (self.base / "studies").with_query(limit="1")
        return self.request("GET", url, {"Accept": "application/dicom+json"})

    async def close(self) -> None:
        await self.session.close()
        if self.credentials is not None:
            await self.credentials.close()


def body_headers(response: aiohttp.ClientResponse) -> CIMultiDictProxy[str] | CIMultiDict[str]:
    """The response headers as they describe the body :func:`iter_body` yields: without
    ``Content-Encoding`` and ``Content-Length`` when the body is decoded on the way."""
    if not coding.decodes(response.headers.get("Content-Encoding")):
        return response.headers
    headers = CIMultiDict(response.headers)
    headers.popall("Content-Encoding")
    headers.popall("Content-Length", None)
    return headers


def checks_its_end(response: aiohttp.ClientResponse) -> bool:
    """Whether a body that ends is known to be whole: aiohttp checks length and
    chunked framing, and a decoder checks that its compressed stream ended."""
    return _framed(response) or coding.decodes(response.headers.get("Content-Encoding"))


async def iter_body(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The response body in chunks, decoded from any coding that can be decoded
    (:mod:`proxy.dicomweb.coding`); a short or broken body raises UpstreamInvalid.

    aiohttp checks ``Content-Length`` and chunked framing and raises
    ``ClientPayloadError`` when the connection drops early, and a decoder notices a
    compressed stream cut short; a close-delimited identity body that stops early
    cannot be told from a complete one by HTTP, so its multipart closing boundary or
    JSON structure is checked (:mod:`proxy.dicomweb.ending`).
    """
    decoder = coding.decoder_for(response.headers.get("Content-Encoding"))
    check = None if _framed(response) else end_check(body_headers(response))
    with translate_errors():
        async for raw in response.content.iter_chunked(CHUNK):
            for chunk in decoder.decode(raw) if decoder else (raw,):
                if check is not None:
                    check.feed(chunk)
                yield chunk
        if decoder is not None:
            decoder.finish()
    if check is not None and not check.whole():
        raise UpstreamInvalid("the upstream closed the connection before the body ended")


def _framed(response: aiohttp.ClientResponse) -> bool:
    """Length or chunked framing: aiohttp itself notices a body cut short."""
    headers = response.headers
    return "Content-Length" in headers or "chunked" in headers.get("Transfer-Encoding", "")


async def read_bounded(response: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    """A whole small body (a QIDO answer, a STOW response), decoded; UpstreamInvalid
    past ``limit`` bytes."""
    body = await read_at_most(iter_body(response), limit)
    if body is None:
        raise UpstreamInvalid(f"the upstream {what} is larger than {limit} bytes")
    return body


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    try:
        yield
    except UpstreamError:
        raise
    except coding.CodingError as exc:
        raise UpstreamInvalid(f"the upstream body cannot be decoded: {exc}") from exc
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
