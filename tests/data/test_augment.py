"""Augmentation presets: seeded, chest-safe (no flip), validated extra transforms."""

from __future__ import annotations

import numpy as np
import pytest

from medtl.config import AugmentConfig, ConfigError
from medtl.data.augment import build_augmenter


def _asymmetric(h: int = 48, w: int = 48) -> np.ndarray:
    """A bright block well inside the left half: a flip moves it to the right."""
    img = np.full((h, w), 0.2, np.float32)
    img[16:32, 6:18] = 0.9
    return img


def _left_right_mass(img: np.ndarray) -> tuple[float, float]:
    half = img.shape[1] // 2
    return float(img[:, :half].sum()), float(img[:, half:].sum())


def test_same_seed_same_output_different_seed_differs():
    aug = build_augmenter(AugmentConfig(preset="chest_xray"), (48, 48))
    img = np.random.default_rng(0).random((48, 48)).astype(np.float32)
    a, b = aug(img, 123), aug(img, 123)
    assert np.array_equal(a, b)
    outs = [aug(img, s) for s in range(10)]
    assert len({o.tobytes() for o in outs}) > 5
    assert all(o.dtype == np.float32 and o.shape == img.shape and 0 <= o.min() and o.max() <= 1 for o in outs)


def test_output_does_not_depend_on_call_history():
    aug = build_augmenter(AugmentConfig(preset="light"), (32, 32))
    img = np.random.default_rng(1).random((32, 32)).astype(np.float32)
    first = aug(img, 7)
    for s in range(20):
        aug(img, s)
    assert np.array_equal(aug(img, 7), first)


def test_chest_xray_never_flips():
    aug = build_augmenter(AugmentConfig(preset="chest_xray"), (48, 48))
    img = _asymmetric()
    for seed in range(200):
        left, right = _left_right_mass(aug(img, seed))
        assert left > right, f"seed {seed} moved the bright block to the right half"


def test_hflip_option_does_flip():
    aug = build_augmenter(AugmentConfig(preset="chest_xray", hflip=True), (48, 48))
    flipped = sum(_left_right_mass(aug(_asymmetric(), s))[1] > _left_right_mass(aug(_asymmetric(), s))[0] for s in range(40))
    assert 5 < flipped < 35


def test_none_preset_is_no_augmenter():
    assert build_augmenter(AugmentConfig(preset="none")) is None


def test_extra_transforms_are_appended():
    cfg = AugmentConfig(preset="none", transforms=[{"name": "VerticalFlip", "p": 1.0}])
    aug = build_augmenter(cfg, (8, 8))
    img = np.arange(64, dtype=np.float32).reshape(8, 8) / 63.0
    assert np.array_equal(aug(img, 0), img[::-1])


def test_unknown_transform_named():
    cfg = AugmentConfig(transforms=[{"name": "RandomBrightnes", "p": 0.5}])
    with pytest.raises(ConfigError, match=r"augment.transforms\[0\].name: unknown albumentations transform 'RandomBrightnes'; did you mean .*RandomBrightnessContrast"):
        build_augmenter(cfg)


def test_unknown_parameter_named():
    cfg = AugmentConfig(transforms=[{"name": "CLAHE", "clip": 2.0}])
    with pytest.raises(ConfigError, match=r"augment.transforms\[0\]: CLAHE has no parameter 'clip'; allowed: clip_limit"):
        build_augmenter(cfg)


def test_bad_parameter_value():
    cfg = AugmentConfig(transforms=[{"name": "GaussianBlur", "blur_limit": "big"}])
    with pytest.raises(ConfigError, match=r"augment.transforms\[0\]: invalid parameters for GaussianBlur"):
        build_augmenter(cfg)


def test_size_changing_transform_rejected():
    cfg = AugmentConfig(preset="none", transforms=[{"name": "CenterCrop", "height": 16, "width": 16}])
    with pytest.raises(ConfigError, match=r"change the image size \(32, 32\) -> \(16, 16\)"):
        build_augmenter(cfg, (32, 32))


def test_missing_name():
    with pytest.raises(ConfigError, match=r"augment.transforms\[0\]: expected a mapping with a 'name'"):
        build_augmenter(AugmentConfig(transforms=[{"p": 0.5}]))
