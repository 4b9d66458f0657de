"""Issue 23: read right or refuse clearly (palette byte order, multi-frame, PNG bit depth,
alpha, size limit), checked on values and on the one-line messages."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageFile, PngImagePlugin
from pydicom.data import get_testdata_file

import medtl.io.dicom as dicom_mod
from medtl.config import DataConfig
from medtl.io import ImageReadError, read_image
from medtl.io.dicom import DEFAULT_MAX_PIXELS
from medtl.io.errors import ImageReadWarning
from tests.io.conftest import to_big_endian, write_dicom

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def png_with_sbit(path: Path, array: np.ndarray, bits: int | None) -> Path:
    info = PngImagePlugin.PngInfo()
    if bits is not None:
        info.add(b"sBIT", bytes([bits]))
    Image.fromarray(array).save(path, pnginfo=info)
    return path


# --------------------------------------------------------------------------- DICOM


def test_big_endian_palette_matches_its_little_endian_twin(tmp_path: Path) -> None:
    little = get_testdata_file("examples_palette.dcm")
    big = to_big_endian(little, tmp_path / "palette_expb.dcm")
    assert pydicom.dcmread(big).original_encoding == (False, False)
    a, b = read_image(little), read_image(big)
    assert b.max() > 0.9  # was 0.004: the LUT was read in the machine's byte order
    np.testing.assert_array_equal(a, b)


def test_multi_frame_is_refused_naming_data_frame_and_read_with_it() -> None:
    path = get_testdata_file("rtdose.dcm")  # 15 frames
    with pytest.raises(ImageReadError, match=r"multi-frame file with 15 frames .*set data\.frame") as err:
        read_image(path)
    assert "\n" not in str(err.value) and str(err.value).startswith(path)
    first, last = read_image(path, frame=0), read_image(path, frame=14)
    assert first.shape == (10, 10) and not np.array_equal(first, last)
    with pytest.raises(ImageReadError, match="frame 15 requested but the file has 15"):
        read_image(path, frame=15)


def test_dicom_over_max_pixels_is_refused_before_decoding(tmp_path: Path, monkeypatch) -> None:
    path = write_dicom(tmp_path / "big.dcm", np.zeros((100, 120), np.uint16))

    def no_decoding(*args, **kwargs):
        raise AssertionError("pixel data decoded although the header was over the limit")

    monkeypatch.setattr(dicom_mod, "decode_pixel_array", no_decoding)
    with pytest.raises(ImageReadError, match=r"big.dcm: image is 120 x 100 = 0.0 million pixels, over the limit "
                                             r"of 0.01 million \(data.max_pixels\); downsample"):
        read_image(path, max_pixels=10_000)


def test_real_film_size_limit() -> None:
    film = SHARED / "dicom-cxr" / "udacity-nih" / "test1.dcm"
    if not film.is_file():
        pytest.skip(f"{film} absent (../shared/data is not part of a fresh clone)")
    assert read_image(film).shape == (1024, 1024)  # the default limit leaves real films alone
    with pytest.raises(ImageReadError, match="1024 x 1024 = 1.0 million pixels, over the limit of 1 million"):
        read_image(film, max_pixels=1_000_000)
    assert read_image(film, max_pixels=None).shape == (1024, 1024)


def test_default_limit_is_the_config_default() -> None:
    assert DataConfig().max_pixels == DEFAULT_MAX_PIXELS


# --------------------------------------------------------------------------- PNG bit depth and alpha


def test_png_sbit_12_unscaled_data_use_12_bit_range(tmp_path: Path, recwarn) -> None:
    path = png_with_sbit(tmp_path / "s12.png", np.array([[0, 2048, 4095]], np.uint16), 12)
    np.testing.assert_allclose(read_image(path), [[0, 2048 / 4095, 1]], atol=1e-6)
    assert not [w for w in recwarn if issubclass(w.category, ImageReadWarning)]


def test_png_sbit_12_scaled_data_use_16_bit_range(tmp_path: Path) -> None:
    raw = np.array([[0, 2048, 4095]], np.uint16)
    scaled = (raw << 4) | (raw >> 8)  # left bit replication, as the PNG standard recommends
    path = png_with_sbit(tmp_path / "s12x.png", scaled.astype(np.uint16), 12)
    np.testing.assert_allclose(read_image(path), scaled / 65535, atol=1e-6)


def test_png_16_bit_full_range_does_not_warn(tmp_path: Path, recwarn) -> None:
    path = png_with_sbit(tmp_path / "full.png", np.array([[0, 40000, 65535]], np.uint16), None)
    np.testing.assert_allclose(read_image(path), [[0, 40000 / 65535, 1]], atol=1e-6)
    assert not [w for w in recwarn if issubclass(w.category, ImageReadWarning)]


def test_grey_alpha_and_palette_transparency_composite_on_black(tmp_path: Path) -> None:
    la = np.array([[[200, 255], [200, 0], [100, 51]]], np.uint8)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    with pytest.warns(ImageReadWarning, match="LA image with transparent pixels"):
        img = read_image(tmp_path / "la.png")
    np.testing.assert_allclose(img, [[200 / 255, 0, 100 / 255 * 51 / 255]], atol=1e-5)
    pal = Image.fromarray(np.array([[0, 1]], np.uint8), mode="P")
    pal.putpalette([255, 255, 255, 128, 128, 128])
    pal.save(tmp_path / "p.png", transparency=0)
    with pytest.warns(ImageReadWarning, match="P image with transparent pixels"):
        np.testing.assert_allclose(read_image(tmp_path / "p.png"), [[0, 128 / 255]], atol=1e-5)


# --------------------------------------------------------------------------- size limit, Pillow formats


def test_png_over_max_pixels_is_refused_before_decoding(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "poster.png"
    Image.new("L", (3000, 2000)).save(path)  # compresses to a few kB; 6 MP once decoded

    def no_decoding(self):
        raise AssertionError("pixels decoded although the header was over the limit")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageReadError) as err:
        read_image(path, max_pixels=5_000_000)
    msg = str(err.value)
    assert msg.startswith(f"{path}: image is 3000 x 2000 = 6.0 million pixels, over the limit of 5 million")
    assert "raise data.max_pixels" in msg and "\n" not in msg


def test_large_jpeg_is_decoded_at_reduced_scale(tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(0, 255, 800).astype(np.uint8), (600, 1))
    path = tmp_path / "big.jpg"
    Image.fromarray(ramp).save(path, quality=95)
    with pytest.warns(ImageReadWarning, match=r"JPEG of 800 x 600 .*decoded at 1/2 scale \(400 x 300\)"):
        half = read_image(path, max_pixels=150_000)
    assert half.shape == (300, 400)
    np.testing.assert_allclose(half, ramp[::2, ::2] / 255, atol=6 / 255)
    with pytest.warns(ImageReadWarning, match="1/8 scale"):
        assert read_image(path, max_pixels=100 * 75).shape == (75, 100)
    with pytest.raises(ImageReadError, match="800 x 600 = 0.5 million pixels, over the limit"):
        read_image(path, max_pixels=100 * 75 - 1)  # not even 1/8 fits
    with warnings.catch_warnings():
        warnings.simplefilter("error", ImageReadWarning)
        assert read_image(path).shape == (600, 800)


def test_real_kermany_jpeg_reduced_decoding() -> None:
    folder = SHARED / "kermany-pneumonia-224"
    files = sorted(folder.rglob("*.jpeg"))[:1] if folder.is_dir() else []
    if not files:
        pytest.skip(f"{folder} absent (../shared/data is not part of a fresh clone)")
    full = read_image(files[0])
    with pytest.warns(ImageReadWarning, match="decoded at 1/2 scale"):
        half = read_image(files[0], max_pixels=112 * 112)
    assert full.shape == (224, 224) and half.shape == (112, 112)
    coarse = full.reshape(112, 2, 112, 2).mean(axis=(1, 3))
    assert np.abs(half - coarse).mean() < 0.02  # the same picture, at half scale
