"""What medtl's DICOM results (heat-map Secondary Captures, prediction Structured Reports) share.

The results go back to the hospital's own PACS, filed in the source film's study: they keep
the patient's name and id on purpose, unlike the report and the overlay PNGs, and must never
be shared outside the hospital. Each ``medtl explain --dicom-out`` or ``medtl predict
--dicom-sr`` call makes one new series; each file is named by its SOPInstanceUID (a PACS
keys on UIDs, and a file name from the source could carry the patient's name).

highdicom is an optional extra (``pip install medtl[dicom]``): :func:`load_highdicom` imports it
with a message that says so.

Example:
    >>> ds = read_source("P0001_1.dcm")       # header only, no pixels
    >>> ds.StudyInstanceUID == new_series_uid()
    False
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from types import ModuleType
from typing import Iterator

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from medtl.io.dicom import _dcmread, is_dicom, open_file

__all__ = ["RESEARCH_CAPTION", "MANUFACTURER", "load_highdicom", "quiet_names", "read_source", "new_series_uid",
           "not_dicom_note", "result_name"]

#: Burned into every heat-map image and written into every report: the results are not a device.
RESEARCH_CAPTION = "research use, not for diagnosis"
MANUFACTURER = "medtl"
# Attributes a derived object must copy from its source to land in the same patient and study.
_REQUIRED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


def load_highdicom() -> ModuleType:
    """highdicom, or an ImportError that names the extra to install.

    Example:
        >>> hd = load_highdicom()
        >>> hd.sc.SCImage.__name__
        'SCImage'
    """
    try:
        import highdicom  # why: optional extra, loaded only when DICOM results are asked for
    except ImportError:
        raise ImportError("DICOM results (--dicom-out, --dicom-sr) need highdicom; "
                          "pip install 'medtl[dicom]'") from None
    return highdicom


@contextmanager
def quiet_names() -> Iterator[None]:
    """Hide highdicom's warning about a one-part PatientName (e.g. a PACS id): the result
    copies the source's name as it is, which is what the PACS expects.

    Example:
        >>> with quiet_names():
        ...     sc = hd.sc.SCImage.from_ref_dataset(...)
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*intended person name.*", category=UserWarning)
        yield


def read_source(path: str | os.PathLike[str]) -> Dataset:
    """The header of a source film (no pixel data), checked to have the UIDs a result refers to.

    Raises:
        ValueError: the file is not DICOM, or lacks one of SOPClassUID, SOPInstanceUID,
            StudyInstanceUID, SeriesInstanceUID.

    Example:
        >>> read_source("P0001_1.dcm").Modality
        'CR'
    """
    if not is_dicom(path):
        raise ValueError(not_dicom_note(path))
    with open_file(path) as fh:
        ds = _dcmread(fh, path, stop_before_pixels=True)
    missing = [k for k in _REQUIRED if not str(ds.get(k, "") or "")]
    if missing:
        raise ValueError(f"{path}: no {', '.join(missing)} in the header; a DICOM result must refer to its "
                         "source film by UID (re-export the film from PACS)")
    return ds


def not_dicom_note(path: str | os.PathLike[str]) -> str:
    """Why a PNG/JPEG input gets no DICOM result (the text of the skipped file's note)."""
    return (f"skipped: {os.path.basename(str(path))} is not DICOM, so it has no patient or study to file a "
            "result in; give the original DICOM film")


def new_series_uid() -> str:
    """A fresh UID (pydicom's root): one series per command call, one instance per file."""
    return str(generate_uid())


def result_name(sop_instance_uid: str) -> str:
    """The file name of a result: its SOPInstanceUID, never the source's file name.

    Example:
        >>> result_name("1.2.3")
        '1.2.3.dcm'
    """
    return f"{sop_instance_uid}.dcm"
