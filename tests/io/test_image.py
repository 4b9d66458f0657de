"""medtl.io.image: PNG/JPEG/TIFF through Pillow, and read_image's dispatch, checked on values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medtl.io import ImageReadError, read_image
from medtl.io.errors import ImageReadWarning


def save(path: Path, array: np.ndarray, **kwargs) -> Path:
    Image.fromarray(array).save(path, **kwargs)
    return path


def test_png_8_bit_scaled_by_bit_depth(tmp_path: Path) -> None:
    path = save(tmp_path / "a.png", np.array([[0, 51], [102, 204]], np.uint8))
    img = read_image(path)
    assert img.dtype == np.float32 and img.shape == (2, 2)
    np.testing.assert_allclose(img, [[0, 0.2], [0.4, 0.8]], atol=1e-6)  # not stretched to 1
    np.testing.assert_allclose(read_image(path, window="minmax"), [[0, 0.25], [0.5, 1]], atol=1e-6)


def test_png_16_bit(tmp_path: Path) -> None:
    path = save(tmp_path / "a16.png", np.array([[0, 32768, 65535]], np.uint16))
    assert Image.open(path).mode.startswith("I;16")
    np.testing.assert_allclose(read_image(path), [[0, 32768 / 65535, 1]], atol=1e-6)
    assert read_image(path)[0, 1] == pytest.approx(0.5, abs=1e-4)


def test_png_16_bit_holding_12_bit_data_without_sbit_warns(tmp_path: Path) -> None:
    path = save(tmp_path / "a12.png", np.array([[0, 2048, 4095]], np.uint16))
    with pytest.warns(ImageReadWarning, match=r"a12.png: 16-bit PNG whose values use only 12 bits .*sBIT"):
        img = read_image(path)
    np.testing.assert_allclose(img, [[0, 2048 / 65535, 4095 / 65535]], atol=1e-7)  # not guessed per image
    np.testing.assert_allclose(read_image(path, window="minmax"), [[0, 2048 / 4095, 1]], atol=1e-6)


def test_rgb_and_rgba_become_luminance(tmp_path: Path) -> None:
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]], np.uint8)
    expected = [[0.299, 0.587, 0.114, 1.0]]
    np.testing.assert_allclose(read_image(save(tmp_path / "rgb.png", rgb)), expected, atol=1e-6)
    opaque = np.concatenate([rgb, np.full((1, 4, 1), 255, np.uint8)], axis=-1)
    np.testing.assert_allclose(read_image(save(tmp_path / "opaque.png", opaque)), expected, atol=1e-6)
    rgba = np.concatenate([rgb, np.array([[[0], [128], [255], [0]]], np.uint8)], axis=-1)
    with pytest.warns(ImageReadWarning, match=r"rgba.png: RGBA image with transparent pixels \(75.0% .*on black"):
        img = read_image(save(tmp_path / "rgba.png", rgba))
    np.testing.assert_allclose(img, [[0.0, 0.587 * 128 / 255, 0.114, 0.0]], atol=1e-6)  # composited on black


def test_palette_and_la_modes(tmp_path: Path) -> None:
    grey = np.array([[0, 128, 255]], np.uint8)
    Image.fromarray(grey).convert("P").save(tmp_path / "p.png")
    np.testing.assert_allclose(read_image(tmp_path / "p.png"), grey / 255, atol=1e-6)
    Image.fromarray(grey).convert("LA").save(tmp_path / "la.png")
    np.testing.assert_allclose(read_image(tmp_path / "la.png"), grey / 255, atol=1e-6)


def test_grey_jpeg(tmp_path: Path) -> None:
    grey = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (64, 1))
    path = save(tmp_path / "g.jpg", grey, quality=95)
    np.testing.assert_allclose(read_image(path), grey / 255, atol=4 / 255)


def test_percentile_window(tmp_path: Path) -> None:
    ramp = np.arange(100 * 100, dtype=np.uint16).reshape(100, 100)
    img = read_image(save(tmp_path / "r.png", ramp), window="percentile")
    lo, hi = np.percentile(ramp, [0.5, 99.5])
    np.testing.assert_allclose(img, np.clip((ramp - lo) / (hi - lo), 0, 1), atol=1e-6)


def test_float_tiff_uses_min_max(tmp_path: Path) -> None:
    path = save(tmp_path / "f.tif", np.array([[-1.0, 0.0, 3.0]], np.float32))
    np.testing.assert_allclose(read_image(path), [[0, 0.25, 1]], atol=1e-6)


def test_multi_frame_tiff(tmp_path: Path) -> None:
    frames = [Image.fromarray(np.full((4, 4), v, np.uint8)) for v in (0, 51, 255)]
    path = tmp_path / "stack.tif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with pytest.raises(ImageReadError, match="3 frames"):
        read_image(path)
    np.testing.assert_allclose(read_image(path, frame=1), np.full((4, 4), 0.2), atol=1e-6)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = save(tmp_path / "phone.jpg", np.zeros((20, 40), np.uint8), exif=exif)
    assert read_image(path).shape == (40, 20)


def test_kermany_jpeg(kermany_dir: Path) -> None:
    path = next((kermany_dir / "train" / "NORMAL").glob("*.jpeg"))
    img = read_image(path)
    assert img.shape == (224, 224) and img.dtype == np.float32
    assert 0.0 <= img.min() and img.max() <= 1.0
    reference = np.asarray(Image.open(path).convert("L"), np.float32) / 255  # Pillow's own rounding
    np.testing.assert_allclose(img, reference, atol=1 / 255 + 1e-6)


def test_dicom_detected_by_content_whatever_the_name(make_dicom) -> None:
    path = make_dicom(np.array([[0, 50], [100, 200]], np.uint8), name="scan.png")
    np.testing.assert_allclose(read_image(path), [[0, 0.25], [0.5, 1]], atol=1e-6)


def test_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "table.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert info.value.reason == "not a DICOM file or an image Pillow can read"
    assert str(info.value).startswith(f"{path}: not a DICOM")


def test_truncated_png(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    path = save(tmp_path / "n.png", noise)
    path.write_bytes(path.read_bytes()[:600])
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert "cannot decode the image" in info.value.reason and "truncated" in info.value.fix


def test_missing_file_and_bad_window(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError) as info:
        read_image(tmp_path / "gone.png")
    assert info.value.reason == "file not found"
    with pytest.raises(ValueError, match="window must be one of"):
        read_image(tmp_path / "gone.png", window="full")


def test_medtl_io_does_not_import_tensorflow() -> None:
    code = "import sys, medtl.io; assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_bytes_already_read_decode_like_the_file(make_dicom, tmp_path: Path) -> None:
    """The cache hands read_image the bytes it hashed; they must decode exactly as the file."""
    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 64)
    dcm = make_dicom(ramp, PhotometricInterpretation="MONOCHROME1", WindowCenter=2000, WindowWidth=3000)
    png = save(tmp_path / "r.png", (ramp // 16).astype(np.uint8))
    for path in (dcm, png):
        from_file = read_image(path)
        from_bytes = read_image(path, data=path.read_bytes())
        np.testing.assert_array_equal(from_bytes, from_file)
        assert from_file.max() > from_file.min()
    # The bytes win over the file: the path only names it (and picks the reader).
    other = save(tmp_path / "other.png", np.full((8, 8), 255, np.uint8))
    np.testing.assert_array_equal(read_image(other, data=png.read_bytes()), read_image(png))
    with pytest.raises(ImageReadError, match="r.png"):
        read_image(png, data=b"not an image at all")


def test_is_image_file_by_suffix_or_dicom_marker(tmp_path):
    from medtl.io.image import is_image_file

    marker = b"\x00" * 128 + b"DICM" + b"\x00" * 8
    files = {"a.PNG": b"x", "b.dcm": b"x", "1.2.840.113619.2.55.3.604": marker, "IM0001": marker,
             "labels.csv": b"file,label\n", "Thumbs.db": b"\x00" * 200, "1.2.3.4": b"\x00" * 200,
             ".hidden.dcm": marker}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    got = sorted(n for n in files if is_image_file(tmp_path / n))
    assert got == ["1.2.840.113619.2.55.3.604", "IM0001", "a.PNG", "b.dcm"]
    assert not is_image_file(tmp_path / "missing")
