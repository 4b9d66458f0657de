"""Fixtures for medtl.io tests: small synthetic DICOM files written with pydicom."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, UID, generate_uid

DX_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1.1")  # Digital X-Ray Image Storage - For Presentation


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    transfer_syntax: UID = ExplicitVRLittleEndian,
    file_format: bool = True,
    **tags: Any,
) -> Path:
    """Write ``pixels`` (H, W) or (H, W, 3), integer dtype, as a DX image with extra ``tags``."""
    ds = Dataset()
    ds.SOPClassUID = DX_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.PatientID = "P001"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(np.issubdtype(pixels.dtype, np.signedinteger))
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<")).tobytes()
    if file_format:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = transfer_syntax
        ds.save_as(path, enforce_file_format=True)
    else:  # a bare data set: no preamble, no 'DICM', no file meta (old PACS exports)
        ds.save_as(path, implicit_vr=True, little_endian=True)
    return path


@pytest.fixture
def make_dicom(tmp_path: Path) -> Callable[..., Path]:
    """``make_dicom(pixels, name="x.dcm", **kw)`` writes a synthetic DICOM into tmp_path."""

    def make(pixels: np.ndarray, name: str = "synthetic.dcm", **kwargs: Any) -> Path:
        return write_dicom(tmp_path / name, np.asarray(pixels), **kwargs)

    return make


def to_big_endian(src: str | Path, dst: Path) -> Path:
    """Rewrite a little-endian file as Explicit VR Big Endian, swapping every OW word as a
    big-endian writer does (pydicom writes bytes values as they are)."""
    ds = pydicom.dcmread(src)
    for elem in ds.iterall():
        if elem.VR == "OW" and isinstance(elem.value, bytes):
            elem.value = np.frombuffer(elem.value, "<u2").astype(">u2").tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    dcmwrite(dst, ds, little_endian=False, implicit_vr=False, force_encoding=True)
    return dst
