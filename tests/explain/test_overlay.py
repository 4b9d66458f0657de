"""Tests for medtl.explain.overlay: blending values, resizing, PNG output."""

from __future__ import annotations

import io

import numpy as np
import pytest
from matplotlib import colormaps
from PIL import Image

from medtl.explain.overlay import overlay, png_bytes, write_png


def _film() -> np.ndarray:
    return np.tile(np.linspace(0.0, 1.0, 8, dtype=np.float32), (6, 1))  # (6, 8) grey ramp


def test_alpha_zero_is_the_grey_film() -> None:
    film = _film()
    rgb = overlay(film, np.random.default_rng(0).random((6, 8)), alpha=0.0)
    assert rgb.dtype == np.uint8 and rgb.shape == (6, 8, 3)
    expected = np.rint(film * 255).astype(np.uint8)
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], expected)


def test_alpha_one_is_the_colormap() -> None:
    heat = np.linspace(0.0, 1.0, 48, dtype=np.float32).reshape(6, 8)
    rgb = overlay(_film(), heat, alpha=1.0, cmap="viridis")
    expected = np.rint(colormaps["viridis"](heat)[..., :3] * 255).astype(np.uint8)
    np.testing.assert_array_equal(rgb, expected)


def test_blend_value_and_weighted_mode() -> None:
    film = np.full((2, 2), 0.5, np.float32)
    heat = np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)
    jet_hot = np.array(colormaps["jet"](1.0)[:3])  # dark red
    rgb = overlay(film, heat, alpha=0.25)
    np.testing.assert_array_equal(rgb[0, 1], np.rint((0.75 * 0.5 + 0.25 * jet_hot) * 255))
    weighted = overlay(film, heat, alpha=0.25, weighted=True)
    np.testing.assert_array_equal(weighted[0, 0], [128, 128, 128])  # no heat: plain film
    np.testing.assert_array_equal(weighted[0, 1], rgb[0, 1])  # full heat: full alpha


def test_heatmap_resized_to_film_and_inputs_clipped() -> None:
    film = np.full((40, 30, 1), 2.0, np.float32)  # (H, W, 1) accepted, clipped to 1
    heat = np.zeros((4, 3), np.float32)
    heat[0, 0] = 1.0
    rgb = overlay(film, heat, alpha=1.0)
    assert rgb.shape == (40, 30, 3)
    cold = np.rint(np.array(colormaps["jet"](0.0)[:3]) * 255)
    np.testing.assert_array_equal(rgb[-1, -1], cold)  # far from the hot cell
    assert not np.array_equal(rgb[0, 0], cold)
    assert (overlay(np.ones((5, 5)), np.zeros((5, 5)), alpha=0.0) == 255).all()


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="grey \\(H, W\\) film"):
        overlay(np.zeros((4, 4, 3)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="NaN"):
        overlay(np.full((4, 4), np.nan), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="alpha=1.5"):
        overlay(np.zeros((4, 4)), np.zeros((4, 4)), alpha=1.5)
    with pytest.raises(ValueError, match="unknown colormap 'nope'"):
        overlay(np.zeros((4, 4)), np.zeros((4, 4)), cmap="nope")
    with pytest.raises(ValueError, match="heat map"):
        overlay(np.zeros((4, 4)), np.zeros((2, 4, 4)))


def test_png_round_trip(tmp_path) -> None:
    rgb = overlay(_film(), np.eye(6, 8, dtype=np.float32), alpha=0.5)
    path = write_png(rgb, tmp_path / "sub" / "cam.png")
    assert path.is_file()
    with Image.open(path) as im:
        assert im.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(im), rgb)
    with Image.open(io.BytesIO(png_bytes(rgb))) as im:
        np.testing.assert_array_equal(np.asarray(im), rgb)
    with pytest.raises(ValueError, match="ending in .png"):
        write_png(rgb, tmp_path / "cam.jpg")
    with pytest.raises(ValueError, match="uint8 \\(H, W, 3\\)"):
        png_bytes(rgb.astype(np.float32))


def test_overlay_needs_no_tensorflow() -> None:
    import subprocess
    import sys

    code = ("import sys, medtl.explain, medtl.explain.overlay; "
            "from medtl.explain import overlay; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_map_png_round_trip_and_bad_maps(tmp_path) -> None:
    from medtl.explain.overlay import read_map_png, write_map_png

    heat = np.linspace(0.0, 1.0, 37 * 23, dtype=np.float32).reshape(37, 23)
    p = write_map_png(heat, tmp_path / "sub" / "m_map.png")
    back = read_map_png(p)
    assert back.dtype == np.float32 and back.shape == (37, 23)
    assert np.abs(back - heat).max() <= 0.5 / 65535 + 1e-7 and back.max() == 1.0
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        write_map_png(heat * 2, tmp_path / "x.png")
    with pytest.raises(ValueError, match="ending in .png"):
        write_map_png(heat, tmp_path / "x.npy")
    write_png(np.zeros((4, 4, 3), np.uint8), tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="not a 16-bit greyscale map PNG"):
        read_map_png(tmp_path / "rgb.png")
