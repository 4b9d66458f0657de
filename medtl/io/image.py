"""Read any supported image file (DICOM, PNG, JPEG, TIFF, BMP) as float32 (H, W) in [0, 1]."""

from __future__ import annotations

import io
import os
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from medtl.io.dicom import (
    check_window,
    decode_dicom,
    frame_index,
    looks_like_dicom,
    luminance,
    open_file,
    scale_minmax,
    scale_percentile,
)
from medtl.io.errors import ImageReadError, one_line

_EXIF_ORIENTATION = 0x0112
IMAGE_SUFFIXES = frozenset({".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """Whether a file found in a folder is one medtl reads: a known image suffix, or the DICOM
    marker ('DICM' at byte 128) whatever the name. Hidden files (``.name``) are not.

    PACS exports are often named by their SOP Instance UID (``1.2.840.113619.2.55.3.604``),
    whose last component looks like a suffix, or have no suffix at all; labels.csv, README.txt
    and Thumbs.db lack the marker.

    Example:
        >>> is_image_file("chest.png"), is_image_file("labels.csv")
        (True, False)
    """
    name = os.path.basename(os.fspath(path))
    if name.startswith("."):
        return False
    if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def read_image(
    path: str | os.PathLike[str], window: str = "auto", frame: int | None = None, data: bytes | None = None
) -> np.ndarray:
    """Read a DICOM, PNG, JPEG, TIFF or BMP file as float32 (H, W) in [0, 1], air dark.

    DICOM is recognised by content ('DICM' at byte 128) or a .dcm/.dicom suffix and read with
    :func:`medtl.io.read_dicom`; other files go through Pillow.

    Args:
        path: Image file.
        window: "auto": DICOM VOI LUT / window (else min-max); for PNG/JPEG the full range of
            the file's bit depth (8-bit / 255, 16-bit / 65535). "minmax": the image's own
            range. "percentile": the 0.5-99.5 percentile range, clipped.
        frame: Frame index for multi-frame files (multi-frame DICOM, TIFF stacks).
        data: The file's bytes, when the caller has read them already (the cache hashes the
            same bytes it decodes, so an entry can never hold pixels of a newer file version);
            ``path`` then only names the file in errors and picks the reader.

    Returns:
        float32 array (H, W) in [0, 1] at the file's own resolution; colour becomes luminance.

    Raises:
        ImageReadError: The file is missing, unreadable, not a single image, or not an image.

    Example:
        >>> img = read_image("chest.png")
        >>> img.dtype, img.ndim
        (dtype('float32'), 2)
    """
    check_window(window)
    with open_file(path) if data is None else io.BytesIO(data) as fh:
        head = fh.read(132)
        fh.seek(0)
        if looks_like_dicom(head, path):
            return decode_dicom(fh, path, window, frame)
        return _read_pillow(fh, path, window, frame)


def _read_pillow(fh: IO[bytes], path: str | os.PathLike[str], window: str, frame: int | None) -> np.ndarray:
    try:
        with Image.open(fh) as im:
            index = frame_index(path, getattr(im, "n_frames", 1), frame)
            if index:
                im.seek(index)
            grey, full_scale = _to_grey(_upright(im))
    except UnidentifiedImageError:
        raise ImageReadError(
            path,
            "not a DICOM file or an image Pillow can read",
            "use DICOM (with the 'DICM' marker or a .dcm suffix), PNG, JPEG, TIFF or BMP",
        ) from None
    except Image.DecompressionBombError as exc:
        fix = "raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file"
        raise ImageReadError(path, one_line(exc, 200), fix) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # Pillow's ways of saying "broken"
        raise ImageReadError(
            path, f"cannot decode the image ({one_line(exc, 150)})", "the file is truncated or corrupt; re-export it"
        ) from None
    if window == "minmax":
        return scale_minmax(grey)
    if window == "percentile":
        return scale_percentile(grey)
    if full_scale is None:  # float images have no bit depth to scale by
        return scale_minmax(grey)
    return scale_minmax(grey, 0.0, full_scale)


def _upright(im: Image.Image) -> Image.Image:
    """Apply an EXIF orientation tag (phone photos of films) as every viewer does."""
    if im.format in ("JPEG", "TIFF", "MPO") and im.getexif().get(_EXIF_ORIENTATION, 1) != 1:
        return ImageOps.exif_transpose(im)
    return im


def _to_grey(im: Image.Image) -> tuple[np.ndarray, float | None]:
    """float32 grey values and the full-scale value of the file's bit depth (None: unknown)."""
    mode = im.mode
    if mode == "1":
        return np.asarray(im, dtype=np.float32), 1.0
    if mode in ("L", "LA", "La"):
        return np.asarray(im.getchannel(0), dtype=np.float32), 255.0
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.float32), 65535.0
    if mode == "I":
        arr = np.asarray(im)
        # Older Pillow opens 16-bit PNGs as 32-bit "I"; data within 0..65535 are taken as 16-bit.
        full = 65535.0 if arr.size and arr.min() >= 0 and arr.max() <= 65535 else None
        return arr.astype(np.float32), full
    if mode == "F":
        return np.asarray(im, dtype=np.float32), None
    if mode != "RGB":
        im = im.convert("RGB")  # drops alpha without compositing; resolves palettes, CMYK, YCbCr
    return luminance(np.asarray(im)), 255.0
