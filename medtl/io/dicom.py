"""Read DICOM files as a radiologist's viewer shows them: float32 (H, W) in [0, 1], air dark.

The display chain follows DICOM PS3.3 C.11: stored values -> Modality LUT (Rescale
Slope/Intercept or Modality LUT Sequence) -> VOI LUT (VOI LUT Sequence, else Window
Center/Width with its VOI LUT Function) -> MONOCHROME1 inversion. Files without any VOI
information fall back to min-max scaling.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import IO, Any

import numpy as np
import pydicom
from pydicom import uid as dicom_uid
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, get_decoder
from pydicom.pixels import pixel_array as decode_pixel_array

from medtl.io.errors import ImageReadError, one_line

WINDOWS = ("auto", "minmax", "percentile")
# Largest image decoded, in pixels (config data.max_pixels has the same default). 50 MP is
# above every single radiograph we know of (full-field mammograms reach ~28 MP, stitched
# long-leg films ~20 MP) and a decoding worker needs ~8 bytes per pixel (400 MB at 50 MP), so
# a scanned poster or a wrong export fails fast instead of exhausting memory in every worker.
DEFAULT_MAX_PIXELS = 50_000_000
DICOM_SUFFIXES = (".dcm", ".dicom")
PERCENTILES = (0.5, 99.5)
HEADER_KEYS = (
    "PatientID",
    "Modality",
    "BodyPartExamined",
    "ViewPosition",
    "PatientPosition",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "BitsStored",
    "BitsAllocated",
    "PixelRepresentation",
    "TransferSyntaxUID",
    "NumberOfFrames",
    "StudyDescription",
)
_INT_KEYS = frozenset({"Rows", "Columns", "BitsStored", "BitsAllocated", "PixelRepresentation", "NumberOfFrames"})
# ITU-R BT.601 weights; the Y of YBR_FULL uses the same ones, so RGB and YBR files agree.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# Groups a real (even preamble-less) DICOM data set starts with; text or other binaries don't.
_DICOM_GROUPS = frozenset({0x0002, 0x0008, 0x0010, 0x0018, 0x0020, 0x0028, 0x7FE0})
# Enhanced multi-frame objects keep rescale and window inside functional groups.
_FUNCTIONAL_GROUP_ITEMS = ("PixelValueTransformationSequence", "FrameVOILUTSequence")


# --------------------------------------------------------------------------- public API


def is_dicom(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is read as DICOM: by content ('DICM' at byte 128) or .dcm/.dicom suffix.

    Example:
        >>> is_dicom("chest.dcm"), is_dicom("chest.png")
        (True, False)
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        head = b""
    return looks_like_dicom(head, path)


def looks_like_dicom(head: bytes, path: str | os.PathLike[str]) -> bool:
    """Decide DICOM-ness from the first 132 bytes of a file and its name."""
    if head[128:132] == b"DICM":
        return True
    # A preamble-less data set starts with a little-endian (0008,xxxx) or (0002,xxxx) tag.
    if head[:2] in (b"\x08\x00", b"\x02\x00") and len(head) >= 8:
        return True
    return Path(path).suffix.lower() in DICOM_SUFFIXES


def read_dicom(
    path: str | os.PathLike[str],
    window: str = "auto",
    frame: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode one DICOM image to float32 (H, W) in [0, 1], as a viewer would display it.

    Args:
        path: DICOM file.
        window: "auto" (the file's VOI LUT or window, else min-max), "minmax", or "percentile"
            (0.5-99.5 percentiles of the modality values, clipped).
        frame: Frame index, required for multi-frame files.
        max_pixels: Refuse images with more than this many pixels (Rows x Columns), checked
            in the header before any pixel is decoded; None: no limit.

    Returns:
        float32 array (Rows, Columns) in [0, 1]; MONOCHROME1 is inverted so air is dark and
        colour images are converted to luminance.

    Raises:
        ImageReadError: The file is missing, not DICOM, truncated, holds no image, has several
            frames and no ``frame``, is larger than ``max_pixels``, or needs a decoder that is
            not installed.

    Example:
        >>> img = read_dicom("chest.dcm")
        >>> img.dtype, img.min() >= 0.0, img.max() <= 1.0
        (dtype('float32'), True, True)
    """
    check_window(window)
    with open_file(path) as fh:
        return decode_dicom(fh, path, window, frame, max_pixels)


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the header fields medtl uses, without reading or decoding the pixel data.

    Returns:
        dict with the keys in ``HEADER_KEYS``; integers for the numeric ones, strings for the
        rest, ``None`` where the element is absent or empty.

    Example:
        >>> read_header("chest.dcm")["Modality"]
        'CR'
    """
    with open_file(path) as fh:
        ds = _dcmread(fh, path, stop_before_pixels=True)
    meta = getattr(ds, "file_meta", None) or Dataset()
    header: dict[str, Any] = {}
    for key in HEADER_KEYS:
        value = (meta if key == "TransferSyntaxUID" else ds).get(key)
        header[key] = _plain(value, as_int=key in _INT_KEYS)
    return header


def check_window(window: str) -> None:
    """Reject an unknown ``window`` mode with the allowed ones."""
    if window not in WINDOWS:
        raise ValueError(f"window must be one of {', '.join(WINDOWS)}; got {window!r}")


def open_file(path: str | os.PathLike[str]) -> IO[bytes]:
    """Open ``path`` for reading, turning OS errors into ImageReadError."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise ImageReadError(path, "file not found", "check the path and the manifest's root folder") from None
    except IsADirectoryError:
        raise ImageReadError(path, "is a folder, not a file", "point at an image file") from None
    except OSError as exc:
        raise ImageReadError(path, f"cannot open the file ({exc.strerror})", "check its permissions") from None


def decode_dicom(
    fh: IO[bytes],
    path: str | os.PathLike[str],
    window: str,
    frame: int | None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """The body of :func:`read_dicom` on an already opened file (read once, decoded once)."""
    ds = _dcmread(fh, path)
    _require_pixels(ds, path)
    index = frame_index(path, _nr_frames(ds, path), frame)
    rows, cols = _number(ds.get("Rows")), _number(ds.get("Columns"))
    if rows and cols:  # missing ones are the decoder's to report
        check_size(path, int(cols), int(rows), max_pixels)
    arr = _decode(ds, path, index)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    samples = int(ds.get("SamplesPerPixel") or 1)
    if arr.ndim != (3 if samples > 1 else 2):  # e.g. pixel data holding more frames than declared
        raise ImageReadError(
            path,
            f"decoded pixel data have shape {arr.shape}, not one frame of SamplesPerPixel {samples}",
            "fix NumberOfFrames / SamplesPerPixel in the header or re-export the file",
        )

    if arr.ndim == 3:  # RGB, or YBR already converted to RGB by pydicom
        bits = int(ds.get("BitsStored") or 8)
        return _colour_to_unit(arr, 2**bits - 1, window)
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, _palette_in_native_order(ds))
        return _colour_to_unit(rgb, np.iinfo(rgb.dtype).max, window)

    values = _modality_lut(arr, ds, path, index)
    invert = photometric == "MONOCHROME1"
    if window == "minmax":
        return scale_minmax(values, invert=invert)
    if window == "percentile":
        return scale_percentile(values, invert=invert)
    return _voi_lut(values, ds, path, index, invert)


# --------------------------------------------------------------------------- intensity maps


def apply_window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Map values through a DICOM window (PS3.3 C.11.2.1.2) to [0, 1].

    A writeable float32 ``values`` is overwritten (the decoder's fresh array, so no copy);
    any other dtype is first converted to a new float32 array. The same holds for
    :func:`scale_minmax` and :func:`scale_percentile`.

    LINEAR: ``(x - (c - 0.5)) / (w - 1) + 0.5``; LINEAR_EXACT: ``(x - c) / w + 0.5``; both
    clipped to [0, 1]. SIGMOID: ``1 / (1 + exp(-4 (x - c) / w))``.

    Example:
        >>> apply_window(np.array([-160.0, 40.0, 240.0], np.float32), 40, 400)
        array([0.       , 0.5012531, 1.       ], dtype=float32)
    """
    out = _as_float32(values)
    function = function.strip().upper()
    if function == "SIGMOID":
        # tanh form of the logistic: no overflow warnings for values far from the centre
        out -= center
        out *= 2.0 / width
        np.tanh(out, out=out)
        out += 1.0
        out *= 0.5
        return out
    if function == "LINEAR_EXACT":
        out -= center
        out *= 1.0 / width
        out += 0.5
    elif width <= 1.0:  # LINEAR with width 1 is a threshold at c - 0.5
        np.greater(out, center - 0.5, out=out)
    else:
        out -= center - 0.5
        out *= 1.0 / (width - 1.0)
        out += 0.5
    np.clip(out, 0.0, 1.0, out=out)
    return out


def scale_minmax(
    values: np.ndarray, lo: float | None = None, hi: float | None = None, invert: bool = False
) -> np.ndarray:
    """Map [lo, hi] (default: the array's range) to [0, 1], clipping; a constant image gives zeros.

    ``invert`` maps hi to 0 instead (MONOCHROME1), still returning zeros for a constant image.
    """
    out = _as_float32(values)
    lo = float(out.min()) if lo is None else float(lo)
    hi = float(out.max()) if hi is None else float(hi)
    if not hi > lo:
        out[...] = 0.0
        return out
    if invert:
        np.subtract(hi, out, out=out)  # hi - x, not -(x - hi): no -0.0 in the output
        out *= 1.0 / (hi - lo)
    else:
        out -= lo
        out *= 1.0 / (hi - lo)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def scale_percentile(values: np.ndarray, invert: bool = False) -> np.ndarray:
    """Min-max between the 0.5th and 99.5th percentiles, clipping the tails."""
    out = _as_float32(values)
    lo, hi = np.percentile(out, PERCENTILES)
    return scale_minmax(out, lo, hi, invert=invert)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """float32 BT.601 luminance of an (..., 3) RGB array (alpha, if any, ignored)."""
    return rgb[..., :3].astype(np.float32) @ _LUMA


def check_size(path: str | os.PathLike[str], width: int, height: int, max_pixels: int | None) -> None:
    """Refuse an image over ``max_pixels`` before it is decoded (the header gives the size)."""
    if max_pixels is None or width * height <= max_pixels:
        return
    raise ImageReadError(
        path,
        f"image is {width} x {height} = {width * height / 1e6:.1f} million pixels, over the limit of "
        f"{max_pixels / 1e6:g} million (data.max_pixels)",
        "downsample the file, or raise data.max_pixels if memory allows (about 8 bytes per pixel per worker)",
    )


def frame_index(path: str | os.PathLike[str], n_frames: int, frame: int | None) -> int | None:
    """Validate ``frame`` against the frame count; None means 'the only frame'."""
    if frame is None:
        if n_frames > 1:
            raise ImageReadError(
                path,
                f"multi-frame file with {n_frames} frames and no frame chosen",
                f"set data.frame (read_image: frame=) to a frame from 0 to {n_frames - 1} to read it, or split the file",
            )
        return None
    if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)) or not 0 <= frame < n_frames:
        raise ImageReadError(
            path,
            f"frame {frame!r} requested but the file has {n_frames} frame(s)",
            f"use a frame from 0 to {n_frames - 1}",
        )
    return int(frame) if n_frames > 1 else None


# --------------------------------------------------------------------------- reading


def _dcmread(fh: IO[bytes], path: str | os.PathLike[str], stop_before_pixels: bool = False) -> Dataset:
    try:
        ds = pydicom.dcmread(fh, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        # pydicom stops after the first 132 bytes, so this second try costs nothing on real
        # non-DICOM files; it rescues preamble-less data sets some PACS still export.
        ds = _dcmread_forced(fh, path, stop_before_pixels)
    except Exception as exc:  # pydicom raises many types on a damaged header
        raise ImageReadError(
            path,
            f"unreadable DICOM header ({one_line(exc, 150)})",
            "the file is truncated or corrupt; re-export or re-copy it",
        ) from exc
    _fill_transfer_syntax(ds)
    return ds


def _dcmread_forced(fh: IO[bytes], path: str | os.PathLike[str], stop_before_pixels: bool) -> Dataset:
    not_dicom = ImageReadError(
        path,
        "not a DICOM file (no 'DICM' marker at byte 128 and no DICOM data elements)",
        "check the file; if it is a PNG/JPEG, give it the right suffix",
    )
    fh.seek(0)
    try:
        ds = pydicom.dcmread(fh, force=True, stop_before_pixels=stop_before_pixels)
    except Exception:
        raise not_dicom from None
    if not any(tag.group in _DICOM_GROUPS for tag in ds.keys()):
        raise not_dicom
    return ds


def _fill_transfer_syntax(ds: Dataset) -> None:
    """Preamble-less files have no file meta: use the encoding pydicom detected while reading."""
    if not hasattr(ds, "file_meta"):
        ds.file_meta = pydicom.dataset.FileMetaDataset()
    if "TransferSyntaxUID" in ds.file_meta:
        return
    implicit, little = ds.original_encoding
    if implicit is None:
        return
    if implicit:
        ds.file_meta.TransferSyntaxUID = dicom_uid.ImplicitVRLittleEndian
    else:
        ds.file_meta.TransferSyntaxUID = dicom_uid.ExplicitVRLittleEndian if little else dicom_uid.ExplicitVRBigEndian


def _require_pixels(ds: Dataset, path: str | os.PathLike[str]) -> None:
    if any(k in ds for k in _PIXEL_KEYWORDS):
        return
    meta = getattr(ds, "file_meta", None) or Dataset()
    # A file cut inside a sequence comes back from pydicom as an empty data set (with only a
    # warning), so the file meta's SOP class is the witness that an image was meant to follow.
    sop = ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID")
    sop_name = getattr(sop, "name", None) or str(sop or "unknown SOP class")
    what = f"Modality {ds.get('Modality') or '?'}, {sop_name}"
    if "Rows" in ds or "Image Storage" in sop_name or (len(ds) == 0 and sop is not None):
        raise ImageReadError(
            path,
            f"no pixel data although the header describes an image ({what}): the file is probably truncated",
            "re-export or re-copy the file",
        )
    raise ImageReadError(
        path,
        f"no pixel data ({what}): not an image (structured report, RT plan or similar)",
        "leave it out of the manifest",
    )


def _nr_frames(ds: Dataset, path: str | os.PathLike[str]) -> int:
    value = ds.get("NumberOfFrames")
    try:
        return max(int(value or 1), 1)
    except (TypeError, ValueError):
        raise ImageReadError(path, f"invalid NumberOfFrames {value!r}", "fix the header (0028,0008)") from None


def _decoder_hint(ts: dicom_uid.UID) -> str:
    if ts in dicom_uid.JPEGLSTransferSyntaxes:
        return "pip install pyjpegls (or: pip install pylibjpeg pylibjpeg-libjpeg)"
    if ts in dicom_uid.JPEG2000TransferSyntaxes:
        return "pip install pylibjpeg pylibjpeg-openjpeg"
    if ts in dicom_uid.JPEGTransferSyntaxes:
        return "pip install pylibjpeg pylibjpeg-libjpeg"
    if ts in dicom_uid.RLETransferSyntaxes:
        return "pip install pylibjpeg pylibjpeg-rle"
    return "convert it to an uncompressed transfer syntax, e.g. gdcmconv --raw IN OUT"


def _decode(ds: Dataset, path: str | os.PathLike[str], index: int | None) -> np.ndarray:
    ts = ds.file_meta.get("TransferSyntaxUID")
    if ts is None:
        raise ImageReadError(
            path, "no Transfer Syntax UID in the file meta header", "the file is corrupt; re-export it"
        )
    ts = dicom_uid.UID(ts)
    name = ts.name if ts.is_transfer_syntax else str(ts)
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise ImageReadError(
            path, f"pixel data use transfer syntax {name}, which pydicom cannot decode", _decoder_hint(ts)
        ) from None
    if not decoder.is_available:
        raise ImageReadError(path, f"no decoder installed for {name} pixel data", _decoder_hint(ts))
    try:
        return decode_pixel_array(ds, index=index)
    except Exception as exc:
        msg = str(exc)
        if "missing dependencies" in msg:
            raise ImageReadError(path, f"no decoder installed for {name} pixel data", _decoder_hint(ts)) from exc
        if "less than expected" in msg:
            raise ImageReadError(
                path,
                f"pixel data shorter than the header says ({one_line(msg, 120)})",
                "the file is truncated; re-export or re-copy it",
            ) from exc
        if ts.is_encapsulated:
            fix = f"the file may be corrupt; try another decoder ({_decoder_hint(ts)}) or re-export it"
        else:
            fix = "the header's image elements (Rows, Columns, Bits Allocated, ...) are missing or wrong; re-export it"
        raise ImageReadError(path, f"cannot decode the {name} pixel data ({one_line(msg, 150)})", fix) from exc


# --------------------------------------------------------------------------- LUT stages


def _attr(ds: Dataset, keyword: str, index: int | None) -> Any:
    """An element from the top level, else from the frame's (or shared) functional groups."""
    if keyword in ds:
        return ds[keyword].value
    for groups_kw in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        groups = ds.get(groups_kw)
        if not groups:
            continue
        pos = (index or 0) if groups_kw.startswith("PerFrame") else 0
        if pos >= len(groups):
            continue
        for item_kw in _FUNCTIONAL_GROUP_ITEMS:
            items = groups[pos].get(item_kw)
            if items and keyword in items[0]:
                return items[0][keyword].value
    return None


def _number(value: Any) -> float | None:
    """First value of a (possibly multi-valued) numeric element, None when absent or junk."""
    if value is None or value == "":
        return None
    if isinstance(value, (MultiValue, list, tuple)):
        if len(value) == 0:
            return None
        value = value[0]
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _modality_lut(arr: np.ndarray, ds: Dataset, path: str | os.PathLike[str], index: int | None) -> np.ndarray:
    """Stored values -> modality values (e.g. Hounsfield units) as float32."""
    seq = ds.get("ModalityLUTSequence")
    if seq:
        lut, first, _ = _read_lut(seq[0], ds, path)
        return _apply_lut(arr, lut, first).astype(np.float32)
    out = _as_float32(arr)
    slope_raw, intercept_raw = _attr(ds, "RescaleSlope", index), _attr(ds, "RescaleIntercept", index)
    slope, intercept = _number(slope_raw), _number(intercept_raw)
    if (slope_raw not in (None, "") and slope is None) or (intercept_raw not in (None, "") and intercept is None):
        raise ImageReadError(
            path,
            f"invalid RescaleSlope/Intercept ({slope_raw!r}, {intercept_raw!r})",
            "fix the header elements (0028,1053) and (0028,1052)",
        )
    if slope is not None and slope != 1.0:
        out *= slope
    if intercept:
        out += intercept
    return out


def _voi_lut(
    values: np.ndarray, ds: Dataset, path: str | os.PathLike[str], index: int | None, invert: bool
) -> np.ndarray:
    """Modality values -> display [0, 1] via the VOI LUT or window; min-max when there is none."""
    seq = ds.get("VOILUTSequence")
    if seq:
        lut, first, bits = _read_lut(seq[0], ds, path)
        # The LUT's output spans its descriptor's bit depth; files whose data overshoot it are
        # scaled by their real maximum rather than clipped.
        top = max(2**bits - 1, int(lut.max()))
        out = _apply_lut(values, lut, first).astype(np.float32)
        out *= 1.0 / top
    else:
        center = _number(_attr(ds, "WindowCenter", index))
        width = _number(_attr(ds, "WindowWidth", index))
        function = str(_attr(ds, "VOILUTFunction", index) or "LINEAR").strip().upper()
        if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
            function = "LINEAR"  # the standard's default
        if center is None or width is None:
            return scale_minmax(values, invert=invert)
        if width <= 0:
            warnings.warn(f"{os.fspath(path)}: ignoring WindowWidth {width} (must be > 0); using min-max", stacklevel=3)
            return scale_minmax(values, invert=invert)
        out = apply_window(values, center, width, function)
    if invert:
        np.subtract(1.0, out, out=out)
    return out


def _read_lut(item: Dataset, ds: Dataset, path: str | os.PathLike[str]) -> tuple[np.ndarray, int, int]:
    """(LUT data, first mapped value, bits per entry) of a Modality or VOI LUT item."""
    try:
        n_entries, first, bits = (int(v) for v in item.LUTDescriptor)
        data = item.LUTData
    except (AttributeError, TypeError, ValueError) as exc:
        reason = f"invalid LUT Descriptor/LUT Data ({one_line(exc, 100)})"
        raise ImageReadError(path, reason, "fix or remove the LUT") from None
    n_entries = n_entries or 65536
    # The descriptor's first value is US or SS depending on the pixel representation.
    if first >= 32768 and ds.get("PixelRepresentation") == 1:
        first -= 65536
    if isinstance(data, (bytes, bytearray)):
        if bits <= 8 and len(data) == n_entries:  # retired byte-packed 8-bit LUT
            lut = np.frombuffer(data, dtype=np.uint8)
        else:
            little = ds.original_encoding[1] is not False
            lut = np.frombuffer(data, dtype="<u2" if little else ">u2", count=len(data) // 2)
    else:
        lut = np.asarray([data] if isinstance(data, int) else list(data), dtype=np.int64)
    if lut.size == 0:
        raise ImageReadError(path, "empty LUT Data", "fix or remove the LUT")
    return lut[:n_entries], first, bits


def _apply_lut(values: np.ndarray, lut: np.ndarray, first: int) -> np.ndarray:
    """Values below ``first`` take the first entry, values past the end the last (PS3.3 C.11)."""
    if np.issubdtype(values.dtype, np.floating):
        idx = np.rint(values - first)
    else:
        idx = values.astype(np.int64) - first
    np.clip(idx, 0, lut.size - 1, out=idx)
    return lut[idx.astype(np.intp, copy=False)]


_PALETTE_DATA = tuple(f"{c}PaletteColorLookupTableData" for c in ("Red", "Green", "Blue", "Alpha"))
_PALETTE_KEEP = (
    "PixelPresentation", "PixelRepresentation", "BitsAllocated", "BitsStored",
    *(f"{c}PaletteColorLookupTableDescriptor" for c in ("Red", "Green", "Blue", "Alpha")),
)


def _palette_in_native_order(ds: Dataset) -> Dataset:
    """``ds``, or for a big-endian file a copy of its palette with the LUT data byte-swapped.

    pydicom's ``apply_color_lut`` reads OW palette data in the machine's byte order (it handles
    endianness only for segmented palettes), so a big-endian file came out nearly black.
    """
    if ds.original_encoding[1] is not False or _PALETTE_DATA[0] not in ds:
        return ds
    lut_ds = Dataset()
    for keyword in (*_PALETTE_KEEP, *_PALETTE_DATA):
        if keyword not in ds:
            continue
        value = ds[keyword].value
        n_entries = int(ds.RedPaletteColorLookupTableDescriptor[0]) or 65536
        if keyword in _PALETTE_DATA and isinstance(value, bytes) and len(value) == 2 * n_entries:
            value = np.frombuffer(value, dtype=">u2").astype("=u2").tobytes()
        setattr(lut_ds, keyword, value)
    return lut_ds


def _colour_to_unit(rgb: np.ndarray, full_scale: int, window: str) -> np.ndarray:
    grey = luminance(rgb)
    if window == "minmax":
        return scale_minmax(grey)
    if window == "percentile":
        return scale_percentile(grey)
    # Colour images are already rendered for display: keep their brightness.
    return scale_minmax(grey, 0.0, float(full_scale))


def _as_float32(values: np.ndarray) -> np.ndarray:
    """A float32 array safe to modify in place: ``values`` itself when it already is one."""
    if values.dtype == np.float32 and values.flags.writeable and values.flags.c_contiguous:
        return values
    return np.array(values, dtype=np.float32, order="C")


def _plain(value: Any, as_int: bool) -> Any:
    if value is None:
        return None
    if isinstance(value, (MultiValue, list, tuple)):
        if not value:
            return None
        value = value[0]  # multi-valued: first, as for window values
    text = str(value).strip()
    if not text:
        return None
    if as_int:
        try:
            return int(text)
        except ValueError:
            return text  # keep a malformed value visible rather than dropping it
    return text
