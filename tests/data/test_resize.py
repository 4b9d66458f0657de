"""Letterbox / stretch resize and mapping results back onto the original film."""

from __future__ import annotations

import numpy as np
import pytest

from medtl.data.resize import letterbox, plan


def _rect_image(h: int, w: int, box: tuple[int, int, int, int]) -> np.ndarray:
    img = np.zeros((h, w), np.float32)
    y0, y1, x0, x1 = box
    img[y0:y1, x0:x1] = 1.0
    return img


def test_letterbox_tall_image_is_centred_with_black_bars():
    img = np.full((400, 200), 0.7, np.float32)
    out, geo = letterbox(img, (224, 224))
    assert out.shape == (224, 224) and out.dtype == np.float32
    assert (geo.new_h, geo.new_w, geo.pad_top, geo.pad_left) == (224, 112, 0, 56)
    assert out[:, :56].max() == 0.0 and out[:, 168:].max() == 0.0
    assert np.allclose(out[:, 56:168], 0.7, atol=1e-6)


def test_stretch_fills_the_canvas():
    img = np.full((400, 200), 0.5, np.float32)
    out, geo = letterbox(img, (64, 64), keep_aspect=False)
    assert out.shape == (64, 64) and np.allclose(out, 0.5)
    assert (geo.pad_top, geo.pad_left, geo.new_h, geo.new_w) == (0, 0, 64, 64)
    assert geo.scale_y == pytest.approx(64 / 400) and geo.scale_x == pytest.approx(64 / 200)


def test_rectangle_lands_where_geometry_says():
    # 300 x 600 (wide) -> 100 x 200 content on a 200 x 200 canvas, 50 px bars top and bottom.
    box = (60, 180, 120, 360)
    out, geo = letterbox(_rect_image(300, 600, box), (200, 200))
    assert (geo.pad_top, geo.new_h, geo.new_w) == (50, 100, 200)
    ys, xs = np.nonzero(out > 0.5)
    assert (ys.min(), ys.max() + 1) == (geo.to_target(60, 0)[0], geo.to_target(180, 0)[0]) == (70, 110)
    assert (xs.min(), xs.max() + 1) == (40, 120)


@pytest.mark.parametrize("keep_aspect", [True, False])
def test_unletterbox_round_trip(keep_aspect):
    box = (40, 120, 30, 90)
    img = _rect_image(160, 120, box)
    out, geo = letterbox(img, (64, 64), keep_aspect=keep_aspect)
    back = geo.unletterbox(out)
    assert back.shape == img.shape
    inside = back[box[0] + 4 : box[1] - 4, box[2] + 4 : box[3] - 4]
    assert inside.min() > 0.9
    assert back[:box[0] - 4].max() < 0.1 and back[:, box[3] + 4:].max() < 0.1
    assert np.abs(back - img).mean() < 0.03


def test_point_maps_back_and_forth():
    geo = plan(1000, 500, (224, 224))
    y, x = geo.to_target(250.0, 100.0)
    assert (y, x) == pytest.approx((250 * 0.224, 100 * 0.224 + 56))
    assert geo.to_original(y, x) == pytest.approx((250.0, 100.0))


def test_unletterbox_small_map_is_upsampled_first():
    geo = plan(100, 50, (32, 32))
    cam = np.zeros((4, 4), np.float32)
    cam[:, 2:] = 1.0  # right half of the canvas
    back = geo.unletterbox(cam)
    assert back.shape == (100, 50)
    assert back[:, -5:].mean() > 0.9 and back[:, :5].mean() < 0.1


def test_upscale_and_channels():
    img = np.random.default_rng(0).random((10, 20, 1)).astype(np.float32)
    out, geo = letterbox(img, (40, 40))
    assert out.shape == (40, 40, 1) and geo.new_w == 40 and geo.new_h == 20


def test_empty_image_rejected():
    with pytest.raises(ValueError, match="empty image"):
        letterbox(np.zeros((0, 5), np.float32), (8, 8))
