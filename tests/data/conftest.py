"""Fixtures for the file I/O tests: small DICOM files written with pydicom."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest


def _write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    slope: float | None = 1.0,
    intercept: float | None = -1024.0,
    pixel_spacing: tuple[float, float] | None = (0.7, 0.8),
    position_z: float | None = 0.0,
    instance: int = 1,
    series_uid: str = "1.2.826.0.1.3680043.8.498.1",
    modality: str = "CT",
) -> Path:
    """Write a minimal, valid uncompressed CT image (one frame)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    pixels = np.asarray(pixels)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.InstanceNumber = instance
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    if slope is not None:
        ds.RescaleSlope = slope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    if pixel_spacing is not None:
        ds.PixelSpacing = list(pixel_spacing)
    ds.SliceThickness = 9.0  # deliberately not the true spacing: positions win
    if position_z is not None:
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-100.0, -120.0, position_z]
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return path


@pytest.fixture
def write_dicom() -> Callable[..., Path]:
    """``write_dicom(path, pixels, slope=, intercept=, pixel_spacing=, position_z=, ...)``."""
    return _write_dicom
