"""The synthetic CT of harness.dicomgen: valid DICOM, and noisy slices that compress
as real uncompressed CT does (what the benchmark's WAN and direct figures rest on)."""

from __future__ import annotations

import gzip
import io

import pydicom

from harness.dicomgen import make_instance


def test_noisy_slices_compress_like_ct_and_read_back() -> None:
    data = make_instance("1.2.3", "1.2.3.4", 7, rows=512, columns=512, noise=True)
    dataset = pydicom.dcmread(io.BytesIO(data))
    assert (dataset.Rows, dataset.Columns, len(dataset.PixelData)) == (512, 512, 512 * 512 * 2)
    assert 1.8 <= len(data) / len(gzip.compress(data, 6)) <= 3.0
    gradient = make_instance("1.2.3", "1.2.3.4", 7, rows=512, columns=512)
    assert len(gradient) / len(gzip.compress(gradient, 6)) > 50  # why the noise is needed


def test_noise_is_reproducible_per_slice() -> None:
    first = pydicom.dcmread(io.BytesIO(make_instance("1.2", "1.3", 3, noise=True, sop_uid="1.4")))
    again = pydicom.dcmread(io.BytesIO(make_instance("1.2", "1.3", 3, noise=True, sop_uid="1.4")))
    other = pydicom.dcmread(io.BytesIO(make_instance("1.2", "1.3", 4, noise=True, sop_uid="1.5")))
    assert first.PixelData == again.PixelData != other.PixelData
