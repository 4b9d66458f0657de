"""Heat-map overlays as DICOM Secondary Capture images, filed in the source film's study.

``medtl explain --dicom-out DIR`` writes one derived Secondary Capture per DICOM film: the
overlay RGB that ``medtl explain`` draws, with a black band below it in which the words
"research use, not for diagnosis" are burned into the pixels (a viewer that drops overlays
and text attributes still shows them). It copies the source's patient and study (it keeps
the patient's identity: for the hospital's own PACS only), starts a new series per call, and
names the source image in SourceImageSequence. No TensorFlow here.

Example:
    >>> series = new_series_uid()
    >>> path = write_overlay_sc("P0001_1.dcm", overlay(film, heat), "pacs_out/", series, 1,
    ...                         "Grad-CAM heat map for class lesion")
    >>> path.name.endswith(".dcm")
    True
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

from medtl.io.dicom_results import (
    MANUFACTURER, RESEARCH_CAPTION, load_highdicom, new_series_uid, quiet_names, read_source, result_name,
)

__all__ = ["caption_band", "write_overlay_sc", "new_series_uid", "SERIES_DESCRIPTION"]

SERIES_DESCRIPTION = f"medtl heat maps ({RESEARCH_CAPTION})"
# DICOM CID 7202 "Source Image Purposes of Reference".
_PLACEHOLDER = ("L", "F")  # replaced by an empty value before writing
_PURPOSE = ("121322", "DCM", "Source image for image processing operation")


def caption_band(rgb: np.ndarray, text: str = RESEARCH_CAPTION) -> np.ndarray:
    """``rgb`` with a black band added below it holding ``text`` in white capitals.

    The band is added rather than drawn over the film so that no anatomy is hidden.

    Args:
        rgb: uint8 (H, W, 3) image, e.g. from :func:`medtl.explain.overlay.overlay`.
        text: the caption.

    Returns:
        uint8 (H + band, W, 3); the band is about 1/12 of the height (at least 16 rows).

    Example:
        >>> caption_band(np.zeros((120, 160, 3), np.uint8)).shape
        (136, 160, 3)
    """
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"caption_band: expected a uint8 (H, W, 3) RGB image, got {arr.dtype} {arr.shape}")
    h, w = arr.shape[:2]
    band = max(16, h // 12)
    words = text.upper()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    size = band * 0.7
    font = ImageFont.load_default(size=size)
    # Shrink the font until the caption fits the width; on narrow films wrap it at 9 px instead.
    while size > 9 and measure.textlength(words, font=font) > w - 4:
        size *= 0.9
        font = ImageFont.load_default(size=size)
    lines = _wrap(words, font, measure, w - 4)
    band = max(band, int(len(lines) * size * 1.25) + 4)
    canvas = Image.new("RGB", (w, h + band), (0, 0, 0))
    canvas.paste(Image.fromarray(arr), (0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.multiline_text((w / 2, h + band / 2), "\n".join(lines), fill=(255, 255, 255), font=font, anchor="mm",
                        align="center")
    return np.asarray(canvas, dtype=np.uint8)


def _wrap(text: str, font, draw: ImageDraw.ImageDraw, width: float) -> list[str]:
    """Greedy word wrap of ``text`` to ``width`` pixels (a word longer than that keeps its line)."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def write_overlay_sc(
    source: str | os.PathLike[str],
    rgb: np.ndarray,
    out_dir: str | os.PathLike[str],
    series_uid: str,
    instance_number: int,
    description: str,
) -> Path:
    """Write ``rgb`` (an overlay of ``source``) as a derived Secondary Capture in its study.

    Args:
        source: the DICOM film the overlay was drawn over.
        rgb: uint8 (H, W, 3) overlay; the caption band is added here.
        out_dir: folder for the file (created); it is named ``<SOPInstanceUID>.dcm``.
        series_uid: the series of this call (:func:`new_series_uid`), shared by its files.
        instance_number: the file's number in that series (1, 2, ...).
        description: what the map shows (DerivationDescription), e.g. "Grad-CAM heat map for
            class lesion, model mobilenetv2 (runs/x/cv-1a2b)".

    Returns:
        The path written.

    Raises:
        ValueError: ``source`` is not DICOM or lacks its UIDs.
        ImportError: highdicom is not installed (``pip install 'medtl[dicom]'``).

    Example:
        >>> write_overlay_sc("a.dcm", rgb, "out/", new_series_uid(), 1, "Grad-CAM heat map")
        PosixPath('out/1.2.826.0.1.3680043.8.498.1234.dcm')
    """
    hd = load_highdicom()
    ref = read_source(source)
    pixels = caption_band(rgb)
    sop_uid = str(generate_uid())
    given = _orientation(ref)

    def build(orientation: tuple[str, str]):
        return hd.sc.SCImage.from_ref_dataset(
            ref_dataset=ref, pixel_array=pixels, photometric_interpretation="RGB", bits_allocated=8,
            coordinate_system="PATIENT", series_instance_uid=series_uid, series_number=_series_number(ref),
            sop_instance_uid=sop_uid, instance_number=int(instance_number), manufacturer=MANUFACTURER,
            patient_orientation=orientation)

    with quiet_names():
        try:
            sc = build(given or _PLACEHOLDER)
        except ValueError:  # an orientation highdicom's enumeration refuses (e.g. "AL"): said as unknown
            given, sc = None, build(_PLACEHOLDER)
    if given is None:
        # highdicom needs an orientation for a patient image; PatientOrientation is type 2C, so
        # an unknown one is written empty rather than guessed.
        sc.PatientOrientation = None
    sc.SeriesDescription = SERIES_DESCRIPTION
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.BurnedInAnnotation = "YES"
    sc.DerivationDescription = f"{description}; {RESEARCH_CAPTION}"[:1024]
    sc.ImageComments = RESEARCH_CAPTION.capitalize()
    item = Dataset()
    item.ReferencedSOPClassUID = ref.SOPClassUID
    item.ReferencedSOPInstanceUID = ref.SOPInstanceUID
    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning = _PURPOSE
    item.PurposeOfReferenceCodeSequence = DicomSequence([purpose])
    sc.SourceImageSequence = DicomSequence([item])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / result_name(sop_uid)
    sc.save_as(path, enforce_file_format=True)
    return path


def _series_number(ref: Dataset) -> int:
    """A series number unlikely to clash with the study's own (which are small)."""
    try:
        return 9000 + int(ref.get("SeriesNumber") or 0) % 1000
    except (TypeError, ValueError):
        return 9000


def _orientation(ref: Dataset) -> tuple[str, str] | None:
    """The source's PatientOrientation when it has two values, else None (unknown)."""
    value = ref.get("PatientOrientation")
    if value is not None and not isinstance(value, str) and len(value) == 2 and all(value):
        return str(value[0]), str(value[1])
    return None
