"""Resize to the model's input size, keeping the geometry needed to map results back.

``letterbox`` scales an image to fit the target size with its aspect ratio kept and pads the
rest with black (0), centred; with ``keep_aspect=False`` it stretches instead. The returned
:class:`Geometry` undoes either: ``unletterbox`` puts a target-sized map (a Grad-CAM heat map)
back onto the original film's pixel grid.

Example:
    >>> img = np.zeros((400, 200), np.float32)
    >>> out, geo = letterbox(img, (224, 224))
    >>> out.shape, geo.pad_left
    ((224, 224), 56)
    >>> geo.unletterbox(out).shape
    (400, 200)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import cv2
import numpy as np


@dataclass(frozen=True)
class Geometry:
    """How an original image was placed on the target canvas.

    Attributes:
        orig_h, orig_w: size of the original image.
        target_h, target_w: size of the canvas (the model's input size).
        new_h, new_w: size of the resized image content on the canvas.
        pad_top, pad_left: offset of the content on the canvas (0 without letterboxing).
    """

    orig_h: int
    orig_w: int
    target_h: int
    target_w: int
    new_h: int
    new_w: int
    pad_top: int
    pad_left: int

    @property
    def scale_y(self) -> float:
        """Target pixels per original pixel, vertically."""
        return self.new_h / self.orig_h

    @property
    def scale_x(self) -> float:
        """Target pixels per original pixel, horizontally."""
        return self.new_w / self.orig_w

    def to_target(self, y: float, x: float) -> tuple[float, float]:
        """Map a point (continuous pixel coordinates, origin at the top-left corner) to the canvas."""
        return y * self.scale_y + self.pad_top, x * self.scale_x + self.pad_left

    def to_original(self, y: float, x: float) -> tuple[float, float]:
        """Map a canvas point back to the original image's coordinates."""
        return (y - self.pad_top) / self.scale_y, (x - self.pad_left) / self.scale_x

    def unletterbox(self, map_hw: np.ndarray) -> np.ndarray:
        """Put a map over the canvas back onto the original image grid.

        Args:
            map_hw: (target_h, target_w) array, or any (h, w) array covering the whole canvas
                (e.g. a 7x7 CAM), which is first resized to the canvas size.

        Returns:
            float32 (orig_h, orig_w): the padding cropped off, the content resized back.
        """
        m = np.asarray(map_hw, dtype=np.float32)
        if m.ndim != 2:
            raise ValueError(f"unletterbox: expected a 2-D map, got shape {m.shape}")
        if m.shape != (self.target_h, self.target_w):
            m = cv2.resize(m, (self.target_w, self.target_h), interpolation=cv2.INTER_LINEAR)
        content = m[self.pad_top : self.pad_top + self.new_h, self.pad_left : self.pad_left + self.new_w]
        return _resize(content, self.orig_h, self.orig_w)

    def to_dict(self) -> dict[str, int]:
        """Plain dict (JSON serialisable)."""
        return asdict(self)


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    if img.shape[:2] == (h, w):
        return np.ascontiguousarray(img)
    # INTER_AREA averages the source pixels under each target pixel, so downscaling does not alias;
    # it degrades to nearest-neighbour when enlarging, where INTER_LINEAR is the right choice.
    shrinking = h * w < img.shape[0] * img.shape[1]
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(img, (w, h), interpolation=interp)


def letterbox(
    img: np.ndarray, size: Sequence[int], keep_aspect: bool = True
) -> tuple[np.ndarray, Geometry]:
    """Resize ``img`` to ``size`` (H, W), letterboxed or stretched.

    Args:
        img: (H, W) or (H, W, C) array; float32 keeps full precision.
        size: target (height, width).
        keep_aspect: True pads with black to keep the aspect ratio; False stretches.

    Returns:
        The resized image (same dtype, target size) and its :class:`Geometry`.

    Example:
        >>> out, geo = letterbox(np.ones((100, 50), np.float32), (64, 64))
        >>> float(out[:, :16].max()), geo.new_w
        (0.0, 32)
    """
    h, w = int(img.shape[0]), int(img.shape[1])
    geo = plan(h, w, size, keep_aspect)
    content = _resize(img, geo.new_h, geo.new_w).reshape((geo.new_h, geo.new_w) + img.shape[2:])
    if not keep_aspect:
        return content, geo
    out = np.zeros((geo.target_h, geo.target_w) + img.shape[2:], dtype=img.dtype)
    out[geo.pad_top : geo.pad_top + geo.new_h, geo.pad_left : geo.pad_left + geo.new_w] = content
    return out, geo


def plan(orig_h: int, orig_w: int, size: Sequence[int], keep_aspect: bool = True) -> Geometry:
    """The :class:`Geometry` that :func:`letterbox` uses for an image of this size (no pixels needed)."""
    th, tw = int(size[0]), int(size[1])
    if orig_h < 1 or orig_w < 1:
        raise ValueError(f"letterbox: empty image of size {orig_h}x{orig_w}")
    if not keep_aspect:
        return Geometry(orig_h, orig_w, th, tw, th, tw, 0, 0)
    scale = min(th / orig_h, tw / orig_w)
    new_h = min(th, max(1, round(orig_h * scale)))
    new_w = min(tw, max(1, round(orig_w * scale)))
    return Geometry(orig_h, orig_w, th, tw, new_h, new_w, (th - new_h) // 2, (tw - new_w) // 2)
