"""Spool a STOW-RS request body to disk, part after part, and identify each instance.

SPEC section 5: the body is read as a stream; its parts go one after the other into one
file under the request's spool directory (:class:`SpoolFile`, written by a thread of the
request's own); the instances are identified by :mod:`proxy.stow.identify`.  The whole
body is spooled before anything is sent, so a malformed body or a client that goes away
sends nothing upstream, and a full disk is 507 (RFC 4918 section 11.5), never a
half-sent request.
"""

from __future__ import annotations

import asyncio
import errno
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from proxy.dicomweb.media import MediaType, parse_media_type
from proxy.dicomweb.multipart import MultipartReader, boundary_of
from proxy.errors import InsufficientStorage, MalformedBody, UnsupportedMediaType
from proxy.stow.identify import dicom_instance, identify_metadata
from proxy.stow.parts import Instance, Kind, Spooled, SpooledPart

BODY = "body"
WRITE_SIZE = 1024**2
IN_FLIGHT = 4
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_Result = TypeVar("_Result")


def kind_of(media: MediaType) -> Kind:
    """415 for anything but the representations STOW-RS defines."""
    if media.main == "application/dicom":
        return Kind.DICOM
    if media.main == "multipart/related":
        part_type = parse_media_type(media.params.get("type", "application/dicom")).main
        for kind in Kind:
            if kind.value == part_type:
                return kind
    raise UnsupportedMediaType(
        'STOW-RS accepts multipart/related; type="application/dicom" (or dicom+json, '
        "dicom+xml) and application/dicom"
    )


async def spool(chunks: AsyncIterable[bytes], content_type: str, directory: Path) -> Spooled:
    """Write every part into ``directory``/body and identify the instances.

    Part 10 instances are identified on the spool thread as soon as they are written,
    while the next parts are still arriving; JSON/XML metadata is read once every part
    (the bulk data) is in."""
    media = parse_media_type(content_type)
    kind = kind_of(media)
    directory.mkdir(parents=True, exist_ok=True)
    params = tuple((k, v) for k, v in media.params.items() if k == "transfer-syntax")
    result = Spooled(kind, params=params)
    with SpoolFile(directory / BODY) as body:
        identified: list[asyncio.Future[Instance | None]] = []

        def identify(part: SpooledPart) -> None:
            if kind is Kind.DICOM:
                identified.append(body.run(dicom_instance, part))

        parts = await _receive(chunks, media, body, identify)
        await body.close()
        for instance in await asyncio.gather(*identified):
            result.add(instance)
        if kind is not Kind.DICOM:
            await asyncio.to_thread(identify_metadata, kind, parts, result)
    return result


async def _receive(
    chunks: AsyncIterable[bytes],
    media: MediaType,
    body: SpoolFile,
    on_part: Callable[[SpooledPart], None],
) -> list[SpooledPart]:
    if media.main == "application/dicom":
        part = await body.part(chunks, "application/dicom", "")
        on_part(part)
        return [part]
    reader = MultipartReader(chunks, boundary_of(media))
    parts: list[SpooledPart] = []
    while (headers := await reader.next_part()) is not None:
        content_type = headers.get("content-type", "application/dicom")
        location = headers.get("content-location", "")
        parts.append(await body.part(_part_body(reader), content_type, location))
        on_part(parts[-1])
    if not parts:
        raise MalformedBody("the multipart body has no parts")
    return parts


async def _part_body(reader: MultipartReader) -> AsyncIterator[bytes]:
    while chunk := await reader.read():
        yield chunk


class SpoolFile:
    """A request's parts one after the other in one file, written by a thread of the
    request's own while the event loop goes on reading the body.

    One file, not one per part: creating a file can cost more than writing half a
    megabyte into one (about 1 ms per create on this project's test machine), and a
    study upload has thousands of parts.  Network chunks are gathered into writes of
    about :data:`WRITE_SIZE`, so a typical instance costs one thread hop, and at most
    :data:`IN_FLIGHT` writes wait: memory stays bounded however fast the client sends.
    Leaving the ``with`` block waits for the write in progress and cancels the rest, so
    nothing is written after it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._size = 0
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="stow-spool")
        self._writes: deque[asyncio.Future[None]] = deque()
        self._file: BinaryIO | None = None  # touched by the spool thread only

    def __enter__(self) -> SpoolFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._thread.shutdown(wait=True, cancel_futures=True)
        if self._file is not None:
            self._file.close()

    def run(self, function: Callable[..., _Result], *args: Any) -> asyncio.Future[_Result]:
        """``function(*args)`` on the spool thread, after every write given so far."""
        return asyncio.wrap_future(self._thread.submit(function, *args))

    async def part(
        self, chunks: AsyncIterable[bytes], content_type: str, location: str
    ) -> SpooledPart:
        offset = self._size
        pending = bytearray()
        async for chunk in chunks:
            pending += chunk
            if len(pending) >= WRITE_SIZE:
                await self._write(pending)
                pending = bytearray()
        await self._write(pending)
        return SpooledPart(self.path, self._size - offset, content_type, location, offset)

    async def close(self) -> None:
        """Every write done and the file closed; a full disk surfaces here at the latest."""
        self._writes.append(self.run(self._close))
        while self._writes:
            await self._writes.popleft()

    async def _write(self, data: bytearray) -> None:
        self._size += len(data)
        write = self.run(self._put, data)
        # A failed write behind the one that raised (the disk stays full) is not news.
        write.add_done_callback(lambda done: done.cancelled() or done.exception())
        self._writes.append(write)
        while self._writes and (len(self._writes) > IN_FLIGHT or self._writes[0].done()):
            await self._writes.popleft()

    def _put(self, data: bytearray) -> None:
        try:
            if self._file is None:
                self._file = open(self.path, "wb", buffering=0)  # noqa: SIM115 - see _close
            view = memoryview(data)
            while view:
                view = view[self._file.write(view) or 0 :]
        except OSError as exc:
            if exc.errno in _NO_SPACE:
                raise InsufficientStorage("the proxy's spool disk is full") from exc
            raise

    def _close(self) -> None:
        if self._file is not None:  # opened by the first part's first write
            self._file.close()
            self._file = None
