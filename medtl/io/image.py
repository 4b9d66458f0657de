"""Read any supported image file (DICOM, PNG, JPEG, TIFF, BMP) as float32 (H, W) in [0, 1]."""

from __future__ import annotations

import io
import os
from typing import IO

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from medtl.io.dicom import (
    DEFAULT_MAX_PIXELS,
    check_size,
    check_window,
    decode_dicom,
    frame_index,
    looks_like_dicom,
    luminance,
    open_file,
    scale_minmax,
    scale_percentile,
)
from medtl.io.errors import ImageReadError, one_line, warn_image

_EXIF_ORIENTATION = 0x0112
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A 16-bit PNG without sBIT whose values stay below 2**14 uses at most a quarter of the range:
# 12- and 14-bit detector data saved unscaled, which would train dark (max 0.0625 for 12 bits).
_FEW_BITS = 14
# JPEG decoders can produce 1/2, 1/4 or 1/8 scale directly (DCT scaling, Pillow's draft mode).
_JPEG_SCALES = (2, 4, 8)
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
    path: str | os.PathLike[str],
    window: str = "auto",
    frame: int | None = None,
    data: bytes | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Read a DICOM, PNG, JPEG, TIFF or BMP file as float32 (H, W) in [0, 1], air dark.

    DICOM is recognised by content ('DICM' at byte 128) or a .dcm/.dicom suffix and read with
    :func:`medtl.io.read_dicom`; other files go through Pillow.

    Args:
        path: Image file.
        window: "auto": DICOM VOI LUT / window (else min-max); for PNG/JPEG the full range of
            the file's bit depth (8-bit / 255, 16-bit / 65535, or 2**b - 1 when a 16-bit PNG's
            sBIT chunk says b bits and its values fit in them). "minmax": the image's own
            range. "percentile": the 0.5-99.5 percentile range, clipped.
        frame: Frame index for multi-frame files (multi-frame DICOM, TIFF stacks).
        data: The file's bytes, when the caller has read them already (the cache hashes the
            same bytes it decodes, so an entry can never hold pixels of a newer file version);
            ``path`` then only names the file in errors and picks the reader.
        max_pixels: Largest image (width x height) to decode; None: no limit. The size is
            checked in the header, before decoding. A larger JPEG is decoded at 1/2, 1/4 or
            1/8 scale to fit (with an :class:`~medtl.io.errors.ImageReadWarning`); other
            formats are refused.

    Returns:
        float32 array (H, W) in [0, 1] at the file's own resolution; colour becomes luminance;
        transparent pixels are composited on black (with an ImageReadWarning).

    Warns:
        ImageReadWarning: alpha composited, JPEG decoded at reduced scale, or a 16-bit PNG
            without sBIT whose values use few bits (it will look dark).

    Raises:
        ImageReadError: The file is missing, unreadable, not a single image, not an image, or
            larger than ``max_pixels``.

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
            return decode_dicom(fh, path, window, frame, max_pixels)
        return _read_pillow(fh, path, window, frame, max_pixels)


def _read_pillow(
    fh: IO[bytes], path: str | os.PathLike[str], window: str, frame: int | None, max_pixels: int | None
) -> np.ndarray:
    sbit = _png_sbit(fh)
    try:
        with Image.open(fh) as im:  # reads the header only; pixels are decoded on first access
            index = frame_index(path, getattr(im, "n_frames", 1), frame)
            if index:
                im.seek(index)
            _fit_size(im, path, max_pixels)
            grey, full_scale = _to_grey(_upright(im), path, sbit, warn_dark=window == "auto")
    except ImageReadError:  # a ValueError already in the one-line form: not to be wrapped below
        raise
    except UnidentifiedImageError:
        raise ImageReadError(
            path,
            "not a DICOM file or an image Pillow can read",
            "use DICOM (with the 'DICM' marker or a .dcm suffix), PNG, JPEG, TIFF or BMP",
        ) from None
    except Image.DecompressionBombError as exc:  # Pillow's own guard, at 2 x PIL.Image.MAX_IMAGE_PIXELS
        fix = "downsample the file (or raise PIL.Image.MAX_IMAGE_PIXELS as well as data.max_pixels if you trust it)"
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


def _fit_size(im: Image.Image, path: str | os.PathLike[str], max_pixels: int | None) -> None:
    """Refuse an image over ``max_pixels`` before decoding, or for a JPEG decode it smaller."""
    width, height = im.size
    if max_pixels is None or width * height <= max_pixels:
        return
    if im.format == "JPEG":
        for scale in _JPEG_SCALES:
            size = (-(-width // scale), -(-height // scale))  # ceil: what the decoder produces
            if size[0] * size[1] <= max_pixels:
                im.draft(im.mode, size)  # changes the decoder's scale; no pixels are read yet
                warn_image(
                    path,
                    f"JPEG of {width} x {height} is over data.max_pixels ({max_pixels:,}); decoded at 1/{scale} "
                    f"scale ({im.size[0]} x {im.size[1]})",
                    "nothing to do if the model input is smaller; raise data.max_pixels for full resolution",
                )
                return
    check_size(path, width, height, max_pixels)


def _png_sbit(fh: IO[bytes]) -> bytes | None:
    """The sBIT chunk (significant bits per channel) of a PNG, else None; Pillow ignores it."""
    start = fh.tell()
    try:
        if fh.read(8) != _PNG_SIGNATURE:
            return None
        stream = PngImagePlugin.ChunkStream(fh)
        for _ in range(1000):  # sBIT must precede the image data; give up on a chunk flood
            cid, _pos, length = stream.read()
            if cid == b"sBIT":
                return fh.read(min(length, 4))
            if cid in (b"IDAT", b"IEND"):
                return None
            fh.seek(length + 4, os.SEEK_CUR)  # chunk data and CRC
        return None
    except Exception:  # a damaged PNG is Pillow's to report, with its own message
        return None
    finally:
        fh.seek(start)


def _png16_full_scale(arr: np.ndarray, path: str | os.PathLike[str], sbit: bytes | None, warn_dark: bool) -> float:
    """The value that means white in a 16-bit greyscale PNG.

    sBIT b < 16 with every value below 2**b: the data were saved unscaled (common for 12-bit
    detector exports), so 2**b - 1 is white. Values above it mean the writer scaled them up
    to 16 bits as the PNG standard asks, so 65535 is. Without sBIT, 65535, with a warning
    (``warn_dark``: the window uses the bit depth) when the values use few bits.
    """
    top = int(arr.max()) if arr.size else 0
    bits = sbit[0] if sbit else 16
    if 1 <= bits < 16:
        return float(2**bits - 1) if top < 2**bits else 65535.0
    if warn_dark and not sbit and 0 < top < 2**_FEW_BITS:
        used = top.bit_length()
        warn_image(
            path,
            f"16-bit PNG whose values use only {used} bits (max {top} of 65535) and no sBIT chunk: read "
            f"against the 16-bit range it is dark (max {top / 65535:.3f})",
            f"save it with an sBIT chunk of {used} bits (or scaled to 16 bits), or set data.window: minmax",
        )
    return 65535.0


def _to_grey(
    im: Image.Image, path: str | os.PathLike[str] = "", sbit: bytes | None = None, warn_dark: bool = True
) -> tuple[np.ndarray, float | None]:
    """float32 grey values and the full-scale value of the file's bit depth (None: unknown)."""
    mode = im.mode
    if mode == "1":
        return np.asarray(im, dtype=np.float32), 1.0
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(im)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):  # 32-bit data: no bit depth to go by
            return arr.astype(np.float32), None
        # Older Pillow opens 16-bit PNGs as 32-bit "I"; data within 0..65535 are taken as 16-bit.
        full = _png16_full_scale(arr, path, sbit, warn_dark) if im.format == "PNG" else 65535.0
        return arr.astype(np.float32), full
    if mode == "F":
        return np.asarray(im, dtype=np.float32), None
    if mode in ("L", "LA", "La", "RGB", "RGBA", "RGBa", "P", "PA") and im.has_transparency_data:
        return _composite_on_black(im, path), 255.0
    if mode == "L":
        return np.asarray(im, dtype=np.float32), 255.0
    if mode != "RGB":
        im = im.convert("RGB")  # resolves palettes, CMYK, YCbCr
    return luminance(np.asarray(im)), 255.0


def _composite_on_black(im: Image.Image, path: str | os.PathLike[str]) -> np.ndarray:
    """Grey values of an image with alpha, composited on black (air is dark on a film)."""
    rgba = np.asarray(im.convert("RGBA"))
    grey = luminance(rgba)
    alpha = rgba[..., 3]
    if alpha.min() < 255:
        grey *= alpha.astype(np.float32) * (1.0 / 255.0)
        share = float(np.mean(alpha < 255))
        warn_image(
            path,
            f"{im.mode} image with transparent pixels ({share:.1%} of them): composited on black",
            "export it without an alpha channel if the transparent parts hold image content",
        )
    return grey
