"""Synthetic DICOM test data: CT series of any size, made with pydicom, no downloads."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


@dataclass
class Study:
    uid: str = field(default_factory=generate_uid)
    series: dict[str, list[tuple[str, bytes]]] = field(default_factory=dict)

    @property
    def instances(self) -> list[tuple[str, str, bytes]]:
        """(series UID, SOP Instance UID, Part 10 bytes) for every instance."""
        return [
            (series_uid, sop_uid, data)
            for series_uid, items in self.series.items()
            for sop_uid, data in items
        ]


# The demo's and the viewer test's study: a patient of its own, so a viewer's list of
# the patient's other studies stays empty.
PHANTOM_PATIENT = {"patient_name": "Phantom^Demo", "patient_id": "PHANTOM-0001"}


def make_instance(
    study_uid: str,
    series_uid: str,
    number: int,
    *,
    rows: int = 512,
    columns: int = 512,
    sop_uid: str | None = None,
    patient_name: str = "Doe^Jane",
    patient_id: str = "SYN-0001",
    series_number: int = 1,
    phantom: bool = False,
    noise: bool = False,
) -> bytes:
    """One CT image (16-bit, ``rows`` x ``columns``) as DICOM Part 10 bytes.

    ``phantom`` draws circles a viewer shows as an image; otherwise a cheap gradient.
    ``noise`` adds a CT scanner's quantum noise to the phantom's body (the air around it
    stays constant): it compresses about as real uncompressed CT does (gzip ≈ 2.3:1),
    where a gradient compresses a hundredfold and would flatter any compressing path.
    """
    sop_uid = sop_uid or generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.StudyDate = "20261120"
    ds.StudyTime = "120000"
    ds.AccessionNumber = "ACC0001"
    ds.StudyID = "1"
    ds.Modality = "CT"
    ds.SeriesNumber = series_number
    ds.SeriesDescription = f"Synthetic series {series_number}"
    ds.InstanceNumber = number
    ds.ImagePositionPatient = [0.0, 0.0, float(number)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 1.0
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[series_uid])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    pixels = _phantom(rows, columns, number, series_number, noise) if phantom or noise else None
    ds.PixelData = pixels if pixels is not None else _pixels(rows, columns, number)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _pixels(rows: int, columns: int, seed: int) -> bytes:
    """A diagonal gradient that differs per slice: 16-bit little endian, 12 bits used."""
    ramp = b"".join(((x * 16 + seed * 64) % 4096).to_bytes(2, "little") for x in range(256))
    line = (ramp * (columns // 256 + 2))[: columns * 2 + 512]
    return b"".join(line[(y % 256) * 2 : (y % 256) * 2 + columns * 2] for y in range(rows))


def _phantom(
    rows: int, columns: int, number: int, series_number: int, noise: bool = False
) -> bytes:
    """A round body with bone, fat and contrast discs that move from slice to slice;
    with ``noise``, Gaussian noise of 20 HU in the field of view (seeded: reproducible)."""
    import numpy as np

    y, x = np.mgrid[0:rows, 0:columns]
    cy, cx = rows / 2, columns / 2
    scale = min(rows, columns) / 2
    hu = np.full((rows, columns), -1000.0)

    def disc(y0: float, x0: float, radius: float, value: float) -> None:
        inside = (y - cy - y0 * scale) ** 2 + (x - cx - x0 * scale) ** 2 <= (radius * scale) ** 2
        hu[inside] = value

    phase = number / 10.0 + series_number
    disc(0.0, 0.0, 0.85, 40.0)  # soft tissue
    disc(0.0, 0.0, 0.8 - 0.05 * series_number, 20.0)
    disc(0.35 * np.sin(phase), 0.35 * np.cos(phase), 0.18, 900.0)  # bone
    disc(-0.4, 0.3, 0.12, -100.0)  # fat
    disc(0.4, -0.3, 0.1 + 0.005 * number, 130.0)  # contrast
    if noise:
        # Quantum noise everywhere inside the scanner's field of view (the body and the
        # air around it), none in the padding outside it, as on a real CT slice.
        view = (y - cy) ** 2 + (x - cx) ** 2 <= scale**2
        rng = np.random.default_rng(number * 1000 + series_number)
        hu[view] += rng.normal(0.0, 20.0, int(view.sum()))
    stored = np.clip(hu + 1024, 0, 4095).astype("<u2")
    return bytes(stored.tobytes())


def make_study(
    series_count: int = 1,
    instances_per_series: int = 3,
    *,
    rows: int = 64,
    columns: int = 64,
    patient_name: str = "Doe^Jane",
    patient_id: str = "SYN-0001",
    phantom: bool = False,
) -> Study:
    """A study with ``series_count`` series of ``instances_per_series`` instances."""
    study = Study()
    for series_number in range(1, series_count + 1):
        series_uid = generate_uid()
        items = []
        for number in range(1, instances_per_series + 1):
            sop_uid = generate_uid()
            data = make_instance(
                study.uid,
                series_uid,
                number,
                rows=rows,
                columns=columns,
                sop_uid=sop_uid,
                patient_name=patient_name,
                patient_id=patient_id,
                series_number=series_number,
                phantom=phantom,
            )
            items.append((sop_uid, data))
        study.series[series_uid] = items
    return study
