"""Synthetic CT data for the benchmark, made with ``harness.dicomgen`` (nothing downloaded).

Study slices carry CT-like noise (``noise=True``: gzip ≈ 2.3:1 as real uncompressed CT),
not the generator's cheap gradient, which gzips a hundredfold and would flatter whatever
path compresses pixel data (Orthanc direct, for a client that accepts gzip).  The STOW
body keeps the gradient: its pixels never cross a compressing path, and noise would
add a minute and a half of generation to the 1 GiB body.

- the *hit study*: a series of 512×512×16-bit CT slices (≈512 KiB), a series of
  128×256 slices (≈64 KiB) and one 16-frame 512×512 instance (≈8 MiB), sized so that
  its study metadata is ≈100 KiB of JSON;
- the *WAN study*: one series of ``count`` slices of any size;
- the *STOW body*: a multipart/related file of ≈512 KiB instances totalling N bytes.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import generate_uid

from harness.dicomgen import make_instance

BOUNDARY = "bench-stow-boundary"
STOW_CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
INSTANCE_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
METADATA_ACCEPT = "application/dicom+json"


@dataclass
class Series:
    uid: str
    instances: list[str] = field(default_factory=list)


@dataclass
class StudySet:
    """UIDs of one stored study, grouped by series name."""

    uid: str
    series: dict[str, Series] = field(default_factory=dict)

    def instance_paths(self, name: str) -> list[str]:
        series = self.series[name]
        base = f"/dicom-web/studies/{self.uid}/series/{series.uid}/instances/"
        return [base + sop for sop in series.instances]

    @property
    def metadata_path(self) -> str:
        return f"/dicom-web/studies/{self.uid}/metadata"


Upload = Callable[[bytes], None]


def _add_series(
    study: StudySet, name: str, count: int, upload: Upload, rows: int, columns: int
) -> None:
    series = Series(generate_uid())
    for number in range(1, count + 1):
        sop = generate_uid()
        upload(
            make_instance(
                study.uid, series.uid, number, rows=rows, columns=columns, sop_uid=sop, noise=True
            )
        )
        series.instances.append(sop)
    study.series[name] = series


def multiframe(study_uid: str, series_uid: str, sop_uid: str, frames: int = 16) -> bytes:
    """A ``frames``-frame 512×512×16-bit instance (8 MiB of pixels for 16 frames)."""
    single = make_instance(study_uid, series_uid, 1, sop_uid=sop_uid, noise=True)
    dataset = dcmread(io.BytesIO(single))
    dataset.NumberOfFrames = frames
    dataset.PixelData = bytes(dataset.PixelData) * frames
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def hit_study(upload: Upload, *, large: int = 24, small: int = 16) -> StudySet:
    study = StudySet(generate_uid())
    _add_series(study, "512k", large, upload, 512, 512)
    _add_series(study, "64k", small, upload, 128, 256)
    series = Series(generate_uid(), [generate_uid()])
    upload(multiframe(study.uid, series.uid, series.instances[0]))
    study.series["8m"] = series
    return study


def wan_study(upload: Upload, *, count: int, rows: int, columns: int) -> StudySet:
    study = StudySet(generate_uid())
    _add_series(study, "ct", count, upload, rows, columns)
    return study


def write_stow_body(path: Path, total_bytes: int) -> tuple[str, int]:
    """A multipart STOW body of 512×512 slices of one new study; (study UID, instances)."""
    study_uid, series_uid = generate_uid(), generate_uid()
    written = count = 0
    with path.open("wb") as out:
        while written < total_bytes:
            count += 1
            data = make_instance(study_uid, series_uid, count)
            head = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            out.write(head + data + b"\r\n")
            written += len(data)
        out.write(f"--{BOUNDARY}--\r\n".encode())
    return study_uid, count
