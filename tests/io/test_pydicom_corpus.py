"""Every file bundled with the installed pydicom goes through read_image: an image in [0, 1]
without NaN, or one medtl error line; nothing else. Little- and big-endian twins agree.

Only the files shipped in the pydicom wheel are used (``get_testdata_files()``, about 190
files, under a second to read): the larger pydicom-data set is downloaded on demand and
cannot be fetched here, so it is not part of the suite.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file, get_testdata_files

from medtl.io import ImageReadError, read_header, read_image
from tests.io.conftest import to_big_endian

FILES = sorted(p for p in get_testdata_files() if os.path.isfile(p))
# (little endian, big endian) pairs that ship with pydicom; frame 0 for the multi-frame ones
TWINS = [
    ("MR_small.dcm", "MR_small_bigendian.dcm"),
    ("MR_small.dcm", "MR_small_expb.dcm"),
    ("liver_1frame.dcm", "liver_expb_1frame.dcm"),
    ("rtdose_1frame.dcm", "rtdose_expb_1frame.dcm"),
    ("rtdose.dcm", "rtdose_expb.dcm"),
    ("SC_rgb_small_odd.dcm", "SC_rgb_small_odd_big_endian.dcm"),
]


def _check_image(img: np.ndarray, path: str) -> None:
    assert isinstance(img, np.ndarray) and img.dtype == np.float32 and img.ndim == 2, path
    assert img.size and np.isfinite(img).all(), f"{path}: NaN or inf"
    assert 0.0 <= img.min() and img.max() <= 1.0, f"{path}: outside [0, 1]"


def _check_refusal(err: ImageReadError, path: str) -> None:
    text = str(err)
    assert "\n" not in text and text.startswith(f"{path}: "), text
    assert err.reason and err.fix and "; " in text, text  # names the problem and the fix


def test_every_bundled_file_is_an_image_or_one_error_line() -> None:
    if len(FILES) < 50:
        pytest.skip(f"only {len(FILES)} pydicom test files installed; expected the wheel's ~190")
    read, refused, frames = 0, 0, 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's own notes on odd files are not under test
        for path in FILES:
            try:
                img = read_image(path)
            except ImageReadError as err:
                _check_refusal(err, path)
                refused += 1
                if "multi-frame" in err.reason:  # the refusal names data.frame: that must work
                    _check_image(read_image(path, frame=0), path)
                    frames += 1
                continue
            _check_image(img, path)  # anything but ImageReadError fails the test here
            read += 1
    assert read >= 70 and frames >= 5, (read, refused, frames)  # 82 read, 111 refused with pydicom 3.0


@pytest.mark.parametrize("little, big", TWINS)
def test_little_and_big_endian_twins_agree(little: str, big: str) -> None:
    try:
        a_path, b_path = get_testdata_file(little), get_testdata_file(big)
    except Exception:  # noqa: BLE001 - pydicom versions differ in what a missing file raises
        a_path = b_path = None
    if not a_path or not b_path:
        pytest.skip(f"{little} / {big} not bundled with this pydicom")
    frame = 0 if (read_header(a_path)["NumberOfFrames"] or 1) > 1 else None
    a, b = read_image(a_path, frame=frame), read_image(b_path, frame=frame)
    assert a.shape == b.shape
    np.testing.assert_array_equal(a, b)


def test_palette_twin_agrees(tmp_path: Path) -> None:
    # pydicom's wheel holds no big-endian palette file (pydicom-data's OBXXXX1A_expb.dcm is the
    # one the issue found), so its twin is written here from the little-endian example.
    little = get_testdata_file("examples_palette.dcm")
    big = to_big_endian(little, tmp_path / "examples_palette_expb.dcm")
    np.testing.assert_array_equal(read_image(little), read_image(big))
