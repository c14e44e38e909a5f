"""Spool a STOW-RS request body to disk, part after part, and identify each instance.

SPEC section 5: the body is read as a stream; its parts go one after the other into one
file under the request's spool directory (:mod:`proxy.stow.spool_file`); the instances
are identified by :mod:`proxy.stow.identify`.  The whole body is spooled before anything
is sent, so a malformed body or a client that goes away sends nothing upstream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Callable
from pathlib import Path

from proxy.dicomweb.media import MediaType, parse_media_type
from proxy.dicomweb.multipart import MultipartReader, boundary_of
from proxy.errors import MalformedBody, UnsupportedMediaType
from proxy.stow.identify import dicom_instance, identify_metadata
from proxy.stow.parts import Instance, Kind, Spooled, SpooledPart
from proxy.stow.spool_file import SpoolFile

BODY = "body"


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
