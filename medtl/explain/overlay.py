"""Heat maps drawn over the windowed original film, as 8-bit RGB images and PNG files.

No TensorFlow here: the report and the CLI draw overlays from saved maps without loading it.

Example:
    >>> film = read_image("film.dcm")                      # (H, W) float32 in [0, 1], windowed
    >>> rgb = overlay(film, explain_for_original(cam, geometry))
    >>> write_png(rgb, "film_cam.png")
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from matplotlib import colormaps
from PIL import Image

__all__ = ["overlay", "write_png", "png_bytes", "write_map_png", "read_map_png", "MAP_PNG_SCALE"]


def _as_grey(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim != 2:
        raise ValueError(f"overlay: expected a grey (H, W) film, got shape {np.shape(image)}")
    if not np.isfinite(img).all():
        raise ValueError("overlay: the film has NaN or infinite values; read it with medtl.io")
    return np.clip(img, 0.0, 1.0)


def overlay(
    image: np.ndarray,
    heatmap: np.ndarray,
    alpha: float = 0.4,
    cmap: str = "jet",
    weighted: bool = False,
) -> np.ndarray:
    """Blend a colour-mapped heat map over a grey film.

    Args:
        image: The windowed film, (H, W) or (H, W, 1) float in [0, 1] (values outside are
            clipped), e.g. from ``medtl.io.read_image``.
        heatmap: (h, w) map in [0, 1]; resized (bilinear) to the film when its size differs.
        alpha: Opacity of the colour, 0 (film only) to 1 (colour only).
        cmap: A matplotlib colormap name.
        weighted: Scale the opacity by the heat, so cold regions show the plain film.

    Returns:
        uint8 (H, W, 3) RGB image.

    Example:
        >>> rgb = overlay(np.zeros((4, 4)), np.ones((2, 2)), alpha=1.0)
        >>> rgb.shape, rgb.dtype
        ((4, 4, 3), dtype('uint8'))
    """
    film = _as_grey(image)
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.ndim == 3 and heat.shape[-1] == 1:
        heat = heat[..., 0]
    if heat.ndim != 2:
        raise ValueError(f"overlay: expected an (h, w) heat map, got shape {np.shape(heatmap)}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay: alpha={alpha} must be between 0 and 1")
    if cmap not in colormaps:
        raise ValueError(f"overlay: unknown colormap {cmap!r}; use a matplotlib name such as 'jet'")
    if heat.shape != film.shape:
        heat = cv2.resize(heat, (film.shape[1], film.shape[0]), interpolation=cv2.INTER_LINEAR)
    heat = np.clip(np.nan_to_num(heat, nan=0.0), 0.0, 1.0)

    colour = colormaps[cmap](heat)[..., :3].astype(np.float32)
    a = alpha * heat[..., None] if weighted else np.float32(alpha)
    rgb = (1.0 - a) * film[..., None] + a * colour
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(
            f"expected a uint8 (H, W, 3) RGB image (from overlay), got {arr.dtype} {arr.shape}"
        )
    return arr


def write_png(rgb: np.ndarray, path: str | Path) -> Path:
    """Write a uint8 (H, W, 3) RGB image as PNG; parent folders are created.

    Example:
        >>> write_png(overlay(film, heat), "out/P0001_1_gradcam.png")
        PosixPath('out/P0001_1_gradcam.png')
    """
    arr = _check_rgb(rgb)
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: write_png writes PNG files; give a name ending in .png")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG")
    return path


def png_bytes(rgb: np.ndarray) -> bytes:
    """PNG-encoded bytes of a uint8 (H, W, 3) RGB image (e.g. to embed in an HTML report)."""
    buf = io.BytesIO()
    Image.fromarray(_check_rgb(rgb)).save(buf, format="PNG")
    return buf.getvalue()


#: Grey level of a map value of 1.0 in a map PNG (16-bit).
MAP_PNG_SCALE = 65535


def write_map_png(heat: np.ndarray, path: str | Path) -> Path:
    """Write a heat map in [0, 1] as a 16-bit greyscale PNG (value * 65535, rounded).

    For measuring localisation against one's own annotations in any tool that reads PNG;
    :func:`read_map_png` gives the map back to within 1/65535.

    Example:
        >>> write_map_png(heat, "out/P0001_1_gradcam_map.png")
        PosixPath('out/P0001_1_gradcam_map.png')
    """
    m = np.asarray(heat, dtype=np.float64)
    if m.ndim != 2 or not np.isfinite(m).all() or m.min() < 0.0 or m.max() > 1.0:
        raise ValueError(f"{path}: expected one (H, W) map with values in [0, 1], got shape {m.shape}")
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: write_map_png writes PNG files; give a name ending in .png")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.rint(m * MAP_PNG_SCALE).astype(np.uint16)).save(path, format="PNG")
    return path


def read_map_png(path: str | Path) -> np.ndarray:
    """A map written by :func:`write_map_png`, as float32 (H, W) in [0, 1]."""
    with Image.open(path) as im:
        arr = np.asarray(im)
    if arr.ndim != 2 or arr.dtype != np.uint16:
        raise ValueError(f"{path}: not a 16-bit greyscale map PNG (got {arr.dtype} {arr.shape}); "
                         "map PNGs are written by medtl explain --save-maps")
    return (arr.astype(np.float32) / MAP_PNG_SCALE).astype(np.float32)
