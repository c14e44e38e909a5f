"""Group spooled instances into upstream STOW-RS requests and stream their bodies.

SPEC section 5: at most ``--stow-max-instances`` instances and ``--stow-max-bytes``
bytes per request (a larger single instance goes alone); a metadata item and its bulk
data parts stay together.  Bodies are streamed from the spool files with an exact
``Content-Length``; nothing is assembled in memory but part headers and, for JSON
bodies, the metadata array.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from proxy.dicomweb import multipart
from proxy.dicomweb.stow_response import Sop
from proxy.stow.parts import Instance, Kind, SpooledPart

# One thread hop reads a whole typical instance (512 KiB CT slice).
READ_SIZE = 1024**2


@dataclass(frozen=True)
class Batch:
    kind: Kind
    instances: tuple[Instance, ...]

    @property
    def sops(self) -> list[Sop]:
        return [instance.sop for instance in self.instances]

    def halves(self) -> tuple[Batch, Batch]:
        middle = len(self.instances) // 2
        return (
            Batch(self.kind, self.instances[:middle]),
            Batch(self.kind, self.instances[middle:]),
        )


def plan(
    kind: Kind, instances: Sequence[Instance], max_instances: int, max_bytes: int
) -> list[Batch]:
    """Fill batches in body order until either limit would be exceeded; sizes count the
    multipart framing too, so ``max_bytes`` bounds the whole request body."""
    batches: list[Batch] = []
    current: list[Instance] = []
    size = _frame_size(kind)
    for instance in instances:
        wire = wire_size(instance)
        full = len(current) >= max_instances or size + wire > max_bytes
        if current and full:
            batches.append(Batch(kind, tuple(current)))
            current, size = [], _frame_size(kind)
        current.append(instance)
        size += wire
    if current:
        batches.append(Batch(kind, tuple(current)))
    return batches


# Every boundary new_boundary() makes has this length.
_SAMPLE_BOUNDARY = "x" * len(multipart.new_boundary())


def wire_size(instance: Instance) -> int:
    """The bytes one instance adds to a body (shared bulk parts counted each time)."""
    framing = sum(len(multipart.part_head(_SAMPLE_BOUNDARY, _headers(p))) for p in instance.parts)
    separators = len(multipart.PART_END) * len(instance.parts)
    comma = 1 if instance.metadata else 0
    return instance.size + framing + separators + comma


def _frame_size(kind: Kind) -> int:
    """Closing delimiter, and for JSON the metadata part's framing (length estimated
    with ten digits, so the estimate errs on the large side)."""
    size = len(multipart.closing(_SAMPLE_BOUNDARY))
    if kind is Kind.JSON:
        head = [("Content-Type", Kind.JSON.value), ("Content-Length", "0" * 10)]
        size += len(multipart.part_head(_SAMPLE_BOUNDARY, head)) + len(multipart.PART_END) + 2
    return size


@dataclass(frozen=True)
class BatchBody:
    """A multipart/related body as a list of pieces: bytes, or a spool file to copy."""

    content_type: str
    pieces: tuple[bytes | SpooledPart, ...]

    @property
    def length(self) -> int:
        return sum(len(p) if isinstance(p, bytes) else p.size for p in self.pieces)

    async def stream(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            if isinstance(piece, bytes):
                yield piece
                continue
            for start in range(0, piece.size, READ_SIZE):
                yield await asyncio.to_thread(piece.read, start, READ_SIZE)


def encode(batch: Batch, params: Sequence[tuple[str, str]] = ()) -> BatchBody:
    """The request body of one batch, with a fresh boundary (RFC 2046 section 5.1.1)."""
    boundary = multipart.new_boundary()
    pieces: list[bytes | SpooledPart] = []
    if batch.kind is Kind.JSON:
        array = b"[" + b",".join(i.metadata for i in batch.instances) + b"]"
        head = [("Content-Type", Kind.JSON.value), ("Content-Length", str(len(array)))]
        pieces += [multipart.part_head(boundary, head), array, multipart.PART_END]
    for part in _parts(batch):
        pieces += [multipart.part_head(boundary, _headers(part)), part, multipart.PART_END]
    pieces.append(multipart.closing(boundary))
    content_type = multipart.content_type(boundary, batch.kind.value, params)
    return BatchBody(content_type, tuple(pieces))


def _parts(batch: Batch) -> list[SpooledPart]:
    """Every spooled part of the batch once (bulk data may be shared by items)."""
    seen: dict[tuple[Path, int], SpooledPart] = {}
    for instance in batch.instances:
        for part in instance.parts:
            seen.setdefault((part.path, part.offset), part)
    return list(seen.values())


def _headers(part: SpooledPart) -> list[tuple[str, str]]:
    headers = [("Content-Type", part.content_type), ("Content-Length", str(part.size))]
    if part.content_location:
        headers.append(("Content-Location", part.content_location))
    return headers
