"""Training-time augmentation with albumentations: presets that are safe for chest X-rays.

Presets (``augment.preset``):

- ``none``: no change.
- ``light``: a small affine (rotation +-5 deg, scale 0.95-1.05, shift 3%) and brightness/contrast.
- ``chest_xray``: rotation +-10 deg, scale 0.9-1.1, shift 6%, brightness/contrast, gamma, mild
  noise or blur. No left-right flip: the heart is on the left and some findings are
  side-specific (dextrocardia, situs), so a flipped film is a different, rare anatomy.
  ``augment.hflip: true`` adds one if you really want it.
- ``chest_xray_robust``: for films from other sites and machines. The ``chest_xray`` geometry
  with a wider zoom (0.9-1.15, i.e. small crops), and acquisition changes a model meets at a
  new site: one of brightness/contrast, gamma (0.7-1.5) or CLAHE; one of blur or sharpening;
  Gaussian noise; JPEG re-encoding (quality 40-95); down- then up-sampling (0.5-0.9x). Each
  with a moderate probability, so most training films stay close to the original.

``augment.transforms`` appends albumentations transforms by class name, e.g.
``[{name: CLAHE, clip_limit: 2.0, p: 0.3}]``; unknown names or parameters are rejected.

Each image is augmented from its own seed, so the result does not depend on threads or order.
``augment.mixup`` / ``augment.cutmix`` then mix whole training batches (:mod:`medtl.data.mixing`).

Example:
    >>> aug = build_augmenter(cfg.augment, image_size=(224, 224))
    >>> out = aug(img, seed=123)   # float32 (H, W) in [0, 1]
"""

from __future__ import annotations

import copy
import difflib
import inspect
import os
import random
import threading
from typing import Sequence

import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check at import (offline sites)
import albumentations as A  # noqa: E402
import cv2  # noqa: E402

from medtl.config import AugmentConfig, ConfigError  # noqa: E402

PRESETS = ("none", "light", "chest_xray", "chest_xray_robust")
_BLACK = {"border_mode": cv2.BORDER_CONSTANT, "fill": 0}  # match the letterbox padding


def preset_transforms(preset: str, hflip: bool = False) -> list[A.BasicTransform]:
    """The transforms of a named preset (see the module docstring)."""
    if preset == "none":
        out: list[A.BasicTransform] = []
    elif preset == "light":
        out = [
            A.Affine(rotate=(-5, 5), scale=(0.95, 1.05), translate_percent=(-0.03, 0.03), p=0.5, **_BLACK),
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
        ]
    elif preset == "chest_xray":
        out = [
            A.Affine(rotate=(-10, 10), scale=(0.9, 1.1), translate_percent=(-0.06, 0.06), p=0.7, **_BLACK),
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.15, p=0.5),
            A.RandomGamma(gamma_limit=(85, 115), p=0.3),
            A.OneOf(
                [A.GaussNoise(std_range=(0.01, 0.03), p=1.0), A.GaussianBlur(blur_limit=(3, 3), p=1.0)],
                p=0.2,
            ),
        ]
    elif preset == "chest_xray_robust":
        out = [
            # scale up to 1.15 crops the film edges a little: a tighter collimation or framing
            A.Affine(rotate=(-10, 10), scale=(0.9, 1.15), translate_percent=(-0.06, 0.06), p=0.7, **_BLACK),
            A.OneOf([  # exposure and processing differ by machine and site
                A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.2, p=1.0),
                A.RandomGamma(gamma_limit=(70, 150), p=1.0),
                A.CLAHE(clip_limit=(1.0, 3.0), tile_grid_size=(8, 8), p=1.0),
            ], p=0.6),
            A.OneOf([  # detector resolution and vendor edge enhancement
                A.GaussianBlur(blur_limit=(3, 5), p=1.0),
                A.Sharpen(alpha=(0.1, 0.3), lightness=(0.9, 1.1), p=1.0),
            ], p=0.3),
            A.GaussNoise(std_range=(0.01, 0.04), p=0.25),  # quantum noise of low-dose films
            A.ImageCompression(quality_range=(40, 95), p=0.3),  # PACS exports are often JPEG
            A.Downscale(scale_range=(0.5, 0.9), p=0.25),  # films stored small and enlarged
        ]
    else:
        raise ConfigError(f"augment.preset: invalid value {preset!r}; expected one of {', '.join(PRESETS)}")
    if hflip:
        out.append(A.HorizontalFlip(p=0.5))
    return out


def _transform_classes() -> dict[str, type]:
    return {
        name: obj for name, obj in vars(A).items()
        if inspect.isclass(obj) and issubclass(obj, A.BasicTransform) and not name.startswith("_")
    }


def parse_transforms(specs: Sequence[dict]) -> list[A.BasicTransform]:
    """Build albumentations transforms from ``[{name: Class, param: value, ...}, ...]``.

    Raises:
        ConfigError: naming ``augment.transforms[i]`` and the unknown transform or parameter.
    """
    known = _transform_classes()
    out = []
    for i, spec in enumerate(specs):
        key = f"augment.transforms[{i}]"
        if not isinstance(spec, dict) or "name" not in spec:
            raise ConfigError(f"{key}: expected a mapping with a 'name', e.g. {{name: CLAHE, p: 0.3}}; got {spec!r}")
        params = {k: v for k, v in spec.items() if k != "name"}
        name = str(spec["name"])
        cls = known.get(name)
        if cls is None:
            close = difflib.get_close_matches(name, list(known), n=3)
            hint = f"did you mean {', '.join(close)}?" if close else "use an albumentations transform class name"
            raise ConfigError(f"{key}.name: unknown albumentations transform {name!r}; {hint}")
        allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]
        unknown = [p for p in params if p not in allowed]
        if unknown:
            raise ConfigError(
                f"{key}: {name} has no parameter {unknown[0]!r}; allowed: {', '.join(allowed)}"
            )
        try:
            out.append(cls(**params))
        except Exception as exc:  # pydantic ValidationError, TypeError, ValueError
            first = str(exc).strip().splitlines()
            raise ConfigError(f"{key}: invalid parameters for {name} {params}: {' '.join(first[:3])}") from None
    return out


class Augmenter:
    """Seeded augmentation of single-channel float images in [0, 1].

    Calls are thread-safe: each thread has its own copy of the pipeline, reseeded per image.
    """

    def __init__(self, transforms: Sequence[A.BasicTransform]):
        self.transforms = list(transforms)
        self._local = threading.local()

    def _compose(self) -> A.Compose:
        comp = getattr(self._local, "compose", None)
        if comp is None:
            transforms = [copy.deepcopy(t) for t in self.transforms]
            comp = self._local.compose = A.Compose(transforms, p=1.0, strict=False)
        return comp

    def __call__(self, img: np.ndarray, seed: int) -> np.ndarray:
        """Augment a float32 (H, W) or (H, W, 1) image; same seed, same result."""
        comp = self._compose()
        # One generator shared by all transforms: seeding each with the same number (what
        # Compose(seed=...) does) would correlate their draws.
        comp.set_random_state(np.random.default_rng(int(seed)), random.Random(int(seed)))
        x = np.ascontiguousarray(img, dtype=np.float32)
        out = np.asarray(comp(image=x)["image"], dtype=np.float32)
        if out.shape != x.shape and out.size == x.size:
            out = out.reshape(x.shape)  # (H, W) <-> (H, W, 1)
        return np.clip(out, 0.0, 1.0, out=out)

    def __repr__(self) -> str:
        return f"Augmenter({[type(t).__name__ for t in self.transforms]})"


def build_augmenter(cfg: AugmentConfig, image_size: Sequence[int] | None = None) -> Augmenter | None:
    """The augmenter for ``cfg`` (preset, hflip, extra transforms), or None when it does nothing.

    With ``image_size``, the pipeline is tried once on a blank image so a transform that
    changes the size (a crop) is rejected now rather than mid-training.

    Example:
        >>> build_augmenter(AugmentConfig(preset="none")) is None
        True
    """
    transforms = preset_transforms(cfg.preset, cfg.hflip) + parse_transforms(cfg.transforms)
    if not transforms:
        return None
    aug = Augmenter(transforms)
    if image_size is not None:
        probe = np.full(tuple(int(s) for s in image_size), 0.5, np.float32)
        try:
            out = aug(probe, seed=0)
        except Exception as exc:
            raise ConfigError(f"augment: the transforms fail on a {probe.shape} grey image ({exc}); check augment.transforms") from None
        if out.shape != probe.shape:
            raise ConfigError(
                f"augment.transforms: the transforms change the image size {probe.shape} -> {out.shape}; "
                "remove crops/resizes or end with a Resize to data.image_size"
            )
    return aug
