"""The chest_xray_robust augmentation preset (medtl/data/augment.py) on a real film."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medtl.config import AugmentConfig
from medtl.data.augment import build_augmenter, preset_transforms


def test_robust_preset_on_a_real_film_keeps_range_dtype_and_shape(kermany_dir: Path):
    from medtl.io.image import read_image

    film = sorted((kermany_dir / "train").rglob("*.jpeg"))[0]
    img = read_image(film)[:160, :200]  # not square: a transform that assumed so would show
    aug = build_augmenter(AugmentConfig(preset="chest_xray_robust"), image_size=img.shape)
    outs = [aug(img, seed=s) for s in range(12)]
    for out in outs:
        assert out.dtype == np.float32 and out.shape == img.shape
        assert 0.0 <= out.min() and out.max() <= 1.0 and np.isfinite(out).all()
    assert sum(not np.allclose(o, img) for o in outs) >= 8  # most films are changed somehow
    assert np.array_equal(aug(img, seed=3), outs[3])  # seeded, like every preset
    # (H, W, 1) in, (H, W, 1) out, as the pipeline calls it
    assert aug(img[..., None], seed=5).shape == img.shape + (1,)


def test_robust_preset_has_the_acquisition_transforms_and_no_flip():
    top = preset_transforms("chest_xray_robust")
    names = {type(t).__name__ for t in top}
    inner = {type(c).__name__ for t in top for c in getattr(t, "transforms", [])}  # inside OneOf
    assert {"Affine", "GaussNoise", "ImageCompression", "Downscale"} <= names
    assert {"CLAHE", "RandomGamma", "Sharpen", "GaussianBlur"} <= inner
    assert "HorizontalFlip" not in names
