"""medtl.io.dicom: the DICOM display chain, error messages and headers, checked on values."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder, pixel_array
from pydicom.sequence import Sequence
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, UID

from medtl.io import ImageReadError, is_dicom, read_dicom, read_header, read_image
from medtl.io.dicom import apply_window

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom.*")


def bundled(name: str) -> str:
    """A test file bundled with pydicom; pydicom 3 downloads many others, impossible offline."""
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not bundled with this pydicom (it would be downloaded)")
    return path


def raw(name: str, **kwargs) -> np.ndarray:
    return pixel_array(pydicom.dcmread(bundled(name)), **kwargs)


def minmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return (x - x.min()) / (x.max() - x.min())


def linear(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """DICOM LINEAR window, written out independently of the code under test."""
    return np.clip((x.astype(np.float64) - (c - 0.5)) / (w - 1) + 0.5, 0, 1)


# --------------------------------------------------------------------------- real chest X-rays


CXR_FILES = [
    "rsna/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm",
    "rsna/Fake_MONOHR1.dcm",
    *[f"udacity-nih/test{i}.dcm" for i in range(1, 7)],
]


def test_real_chest_xrays_all_decode(dicom_cxr_dir: Path) -> None:
    for name in CXR_FILES:
        img = read_image(dicom_cxr_dir / name)
        assert img.shape == (1024, 1024), name
        assert img.dtype == np.float32, name
        assert img.min() >= 0.0 and img.max() <= 1.0, name
        assert img.max() - img.min() > 0.9, name  # no window on these: min-max fills the range


def test_fake_monochrome1_is_the_inverted_original(dicom_cxr_dir: Path) -> None:
    original = read_image(dicom_cxr_dir / CXR_FILES[0])
    inverted = read_image(dicom_cxr_dir / CXR_FILES[1])
    np.testing.assert_allclose(inverted, 1.0 - original, atol=1e-6)
    assert original.mean() == pytest.approx(0.629, abs=0.01)  # a chest film: mostly bright body


def test_same_pixels_different_headers_decode_identically(dicom_cxr_dir: Path) -> None:
    test1 = read_image(dicom_cxr_dir / "udacity-nih/test1.dcm")
    test4 = read_image(dicom_cxr_dir / "udacity-nih/test4.dcm")
    assert np.array_equal(test1, test4)
    stored = pixel_array(pydicom.dcmread(dicom_cxr_dir / "udacity-nih/test1.dcm"))
    np.testing.assert_allclose(test1, minmax(stored), atol=1e-6)


def test_read_header_of_real_files(dicom_cxr_dir: Path) -> None:
    assert read_header(dicom_cxr_dir / "udacity-nih/test5.dcm")["Modality"] == "CT"
    header = read_header(dicom_cxr_dir / "udacity-nih/test4.dcm")
    assert header["BodyPartExamined"] == "RIBCAGE"
    assert header["StudyDescription"] == "No Finding"
    assert header["PatientPosition"] == "PA"
    assert header["Rows"] == 1024 and header["BitsStored"] == 8
    assert header["TransferSyntaxUID"] == "1.2.840.10008.1.2"
    assert header["ViewPosition"] is None and header["NumberOfFrames"] is None
    rsna = read_header(dicom_cxr_dir / CXR_FILES[1])
    assert rsna["PhotometricInterpretation"] == "MONOCHROME1"
    assert rsna["TransferSyntaxUID"] == "1.2.840.10008.1.2.4.50"


# --------------------------------------------------------------------------- pydicom test files


MR_SMALL_VARIANTS = [
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_expb.dcm",
    "MR_small_padded.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
]


@pytest.mark.parametrize("name", MR_SMALL_VARIANTS)
def test_lossless_transfer_syntaxes_match_uncompressed(name: str) -> None:
    reference = read_image(bundled("MR_small.dcm"))
    assert np.array_equal(read_image(bundled(name)), reference)


def test_window_of_signed_16_bit_mr() -> None:
    # MR_small: signed 16-bit, WindowCenter 600, WindowWidth 1600, no VOILUTFunction -> LINEAR
    img = read_image(bundled("MR_small.dcm"))
    np.testing.assert_allclose(img, linear(raw("MR_small.dcm"), 600, 1600), atol=1e-6)


def test_ct_rescale_and_minmax_without_window() -> None:
    # CT_small: signed, RescaleIntercept -1024, no window: min-max of the Hounsfield units
    img = read_image(bundled("CT_small.dcm"))
    np.testing.assert_allclose(img, minmax(raw("CT_small.dcm")), atol=1e-6)


def test_jpeg2000_signed_14_bit_with_rescale_and_window() -> None:
    # 693_J2KI: JPEG 2000, signed, BitsStored 14, slope 1, intercept -1024, window 40/100
    hu = raw("693_J2KI.dcm").astype(np.float64) - 1024
    np.testing.assert_allclose(read_image(bundled("693_J2KI.dcm")), linear(hu, 40, 100), atol=1e-6)


def test_12_bit_in_16_uses_first_of_several_windows() -> None:
    # examples_overlay: BitsStored 12 of 16, WindowCenter [450, 200], WindowWidth [790, 443]
    img = read_image(bundled("examples_overlay.dcm"))
    np.testing.assert_allclose(img, linear(raw("examples_overlay.dcm"), 450, 790), atol=1e-6)


@pytest.mark.parametrize(
    "name",
    ["JPGExtended.dcm", "JPEG2000.dcm", "JPEGLSNearLossless_08.dcm", "JPEGLSNearLossless_16.dcm", "image_dfl.dcm"],
)
def test_other_transfer_syntaxes_decode_min_max(name: str) -> None:
    np.testing.assert_allclose(read_image(bundled(name)), minmax(raw(name)), atol=1e-6)


def test_rgb_and_ybr_become_the_same_grey() -> None:
    rgb = read_image(bundled("SC_rgb_rle.dcm"))
    assert rgb.shape == (100, 100)
    expected = raw("SC_rgb_rle.dcm").astype(np.float64) @ [0.299, 0.587, 0.114] / 255
    np.testing.assert_allclose(rgb, expected, atol=1e-5)
    # the same picture as uncompressed YBR_FULL_422, JPEG lossless and JPEG baseline (YBR_FULL)
    np.testing.assert_allclose(read_image(bundled("SC_ybr_full_422_uncompressed.dcm")), rgb, atol=6 / 255)
    assert np.array_equal(read_image(bundled("SC_rgb_jpeg_gdcm.dcm")), rgb)
    np.testing.assert_allclose(read_image(bundled("SC_rgb_jpeg_dcmtk.dcm")), rgb, atol=6 / 255)


def test_ybr_grey_is_its_luma_channel() -> None:
    y = raw("SC_ybr_full_422_uncompressed.dcm", raw=True)[..., 0] / 255
    np.testing.assert_allclose(read_image(bundled("SC_ybr_full_422_uncompressed.dcm")), y, atol=2 / 255)


@pytest.mark.parametrize("name", ["GDCMJ2K_TextGBR.dcm", "SC_rgb_jls_lossy_line.dcm", "examples_palette.dcm"])
def test_other_colour_encodings_become_2d_grey(name: str) -> None:
    img = read_image(bundled(name))
    assert img.ndim == 2 and img.dtype == np.float32
    assert 0.0 <= img.min() < img.max() <= 1.0


def test_multi_frame_needs_a_frame() -> None:
    path = bundled("rtdose.dcm")
    with pytest.raises(ImageReadError, match=r"15 frames.*frame=") as info:
        read_image(path)
    assert info.value.path == path
    np.testing.assert_allclose(read_image(path, frame=3), minmax(raw("rtdose.dcm")[3]), atol=1e-6)
    with pytest.raises(ImageReadError, match="frame 15 requested but the file has 15 frame"):
        read_image(path, frame=15)
    second = read_image(bundled("SC_rgb_rle_2frame.dcm"), frame=1)
    assert second.shape == (100, 100)


@pytest.mark.parametrize("name, kind", [("reportsi.dcm", "SR"), ("rtplan.dcm", "RTPLAN"), ("test-SR.dcm", "SR")])
def test_no_pixel_data(name: str, kind: str) -> None:
    path = bundled(name)
    with pytest.raises(ImageReadError, match=f"no pixel data \\(Modality {kind}") as info:
        read_image(path)
    assert str(info.value).startswith(f"{path}: no pixel data")
    assert read_header(path)["Modality"] == kind  # the header alone is still readable


def test_bundled_truncated_file() -> None:
    with pytest.raises(ImageReadError) as info:
        read_image(bundled("MR_truncated.dcm"))
    assert "(8130 vs 8192 bytes)" in info.value.reason and "truncated" in info.value.fix


def test_preamble_less_data_set_is_read(make_dicom) -> None:
    path = make_dicom(np.array([[0, 100], [200, 400]], np.uint16), name="bare.raw", file_format=False)
    assert path.read_bytes()[128:132] != b"DICM"
    assert is_dicom(path)
    np.testing.assert_allclose(read_image(path), [[0, 0.25], [0.5, 1]], atol=1e-6)


# --------------------------------------------------------------------------- windowing, by hand


HU = np.array([[-1000, -160, 40, 140, 240, 1000]], np.int16)
EXACT_40_400 = {"WindowCenter": 40, "WindowWidth": 400, "VOILUTFunction": "LINEAR_EXACT"}


def test_linear_window_hand_values(make_dicom) -> None:
    img = read_dicom(make_dicom(HU, WindowCenter=40, WindowWidth=400))
    # (x - 39.5) / 399 + 0.5, clipped
    np.testing.assert_allclose(img, [[0, 0, 0.501253, 0.75188, 1, 1]], atol=1e-5)
    assert img[0, 2] == pytest.approx(0.5, abs=0.002)


def test_linear_exact_window_hand_values(make_dicom) -> None:
    img = read_dicom(make_dicom(HU, **EXACT_40_400))
    np.testing.assert_allclose(img, [[0, 0, 0.5, 0.75, 1, 1]], atol=1e-6)


def test_sigmoid_window_hand_values(make_dicom) -> None:
    img = read_dicom(make_dicom(HU, WindowCenter=40, WindowWidth=400, VOILUTFunction="SIGMOID"))
    expected = 1 / (1 + np.exp(-4 * (HU.astype(np.float64) - 40) / 400))
    np.testing.assert_allclose(img, expected, atol=1e-6)
    assert img[0, 2] == pytest.approx(0.5) and img[0, 3] == pytest.approx(0.7310586, abs=1e-6)


def test_first_of_several_window_values(make_dicom) -> None:
    img = read_dicom(make_dicom(HU, WindowCenter=[40, 400], WindowWidth=[400, 2000], VOILUTFunction="LINEAR_EXACT"))
    np.testing.assert_allclose(img, [[0, 0, 0.5, 0.75, 1, 1]], atol=1e-6)


def test_rescale_applies_before_window(make_dicom) -> None:
    stored = ((HU.astype(np.int32) + 1024) // 2).astype(np.uint16)  # HU = 2 * stored - 1024
    img = read_dicom(
        make_dicom(stored, RescaleSlope=2, RescaleIntercept=-1024, **EXACT_40_400)
    )
    np.testing.assert_allclose(img, [[0, 0, 0.5, 0.75, 1, 1]], atol=1e-6)


def test_monochrome1_inverted_after_window(make_dicom) -> None:
    img = read_dicom(
        make_dicom(HU, photometric="MONOCHROME1", **EXACT_40_400)
    )
    np.testing.assert_allclose(img, [[1, 1, 0.5, 0.25, 0, 0]], atol=1e-6)


def test_monochrome1_without_window_is_inverted_min_max(make_dicom) -> None:
    stored = np.array([[0, 1000], [3000, 4000]], np.uint16)
    img = read_dicom(make_dicom(stored, photometric="MONOCHROME1"))
    np.testing.assert_allclose(img, [[1, 0.75], [0.25, 0]], atol=1e-6)  # high stored = dark


def test_voi_lut_sequence_is_preferred_and_scaled_by_its_bit_depth(make_dicom) -> None:
    item = Dataset()
    item.add_new(0x00283002, "US", [1000, 100, 12])  # LUT Descriptor: 1000 entries from 100, 12 bits
    lut = np.round(np.arange(1000) * 4095 / 999).astype(np.uint16)
    item.add_new(0x00283006, "OW", lut.tobytes())  # LUT Data as OW, the common encoding
    stored = np.array([[0, 100, 600, 1099, 3000]], np.uint16)
    img = read_dicom(make_dicom(stored, VOILUTSequence=Sequence([item]), WindowCenter=0, WindowWidth=10))
    np.testing.assert_allclose(img, [[0, 0, lut[500] / 4095, 1, 1]], atol=1e-6)


def test_voi_lut_8_bit_with_us_data_and_monochrome1(make_dicom) -> None:
    item = Dataset()
    item.add_new(0x00283002, "US", [4, 0, 8])
    item.add_new(0x00283006, "US", [0, 51, 102, 255])
    stored = np.array([[0, 1, 2, 3]], np.uint8)
    img = read_dicom(make_dicom(stored, photometric="MONOCHROME1", VOILUTSequence=Sequence([item])))
    np.testing.assert_allclose(img, [[1, 0.8, 0.6, 0]], atol=1e-6)


def test_modality_lut_sequence_then_window(make_dicom) -> None:
    item = Dataset()
    item.add_new(0x00283002, "US", [4, 0, 16])
    item.add_new(0x00283006, "US", [0, 100, 200, 300])
    item.ModalityLUTType = "US"
    img = read_dicom(
        make_dicom(
            np.array([[0, 1, 2, 3, 9]], np.uint16),
            ModalityLUTSequence=Sequence([item]),
            WindowCenter=150,
            WindowWidth=300,
            VOILUTFunction="LINEAR_EXACT",
        )
    )
    np.testing.assert_allclose(img, [[0, 1 / 3, 2 / 3, 1, 1]], atol=1e-6)


def test_12_bits_stored_ignores_high_bits(make_dicom) -> None:
    stored = np.array([[0xF000 | 0, 0x1000 | 4095, 2048]], np.uint16)  # junk above bit 11
    img = read_dicom(make_dicom(stored, bits_stored=12))
    np.testing.assert_allclose(img, [[0, 1, 2048 / 4095]], atol=1e-6)


def test_signed_12_bits_are_sign_extended(make_dicom) -> None:
    twos = np.array([[0x800, 0x7FF, 0xFFB]], np.uint16)  # -2048, 2047, -5 in 12-bit two's complement
    img = read_dicom(
        make_dicom(
            twos, bits_stored=12, PixelRepresentation=1, WindowCenter=0, WindowWidth=4096, VOILUTFunction="LINEAR_EXACT"
        )
    )
    np.testing.assert_allclose(img, [[0, 4095 / 4096, 0.5 - 5 / 4096]], atol=1e-6)


def test_8_bit_window(make_dicom) -> None:
    stored = np.array([[0, 64, 128, 255]], np.uint8)
    img = read_dicom(make_dicom(stored, WindowCenter=128, WindowWidth=256, VOILUTFunction="LINEAR_EXACT"))
    np.testing.assert_allclose(img, [[0, 0.25, 0.5, 255 / 256]], atol=1e-6)


def test_enhanced_multi_frame_functional_groups(make_dicom) -> None:
    shared, frame0, frame1 = Dataset(), Dataset(), Dataset()
    voi = Dataset()
    voi.WindowCenter, voi.WindowWidth, voi.VOILUTFunction = 40, 400, "LINEAR_EXACT"
    shared.FrameVOILUTSequence = Sequence([voi])
    for item, intercept in ((frame0, 0), (frame1, -100)):
        pvt = Dataset()
        pvt.RescaleSlope, pvt.RescaleIntercept = 1, intercept
        item.PixelValueTransformationSequence = Sequence([pvt])
    path = make_dicom(
        np.array([[40, 140], [140, 240]], np.int16),
        Rows=1,  # the 2x2 block is two 1x2 frames
        NumberOfFrames=2,
        SharedFunctionalGroupsSequence=Sequence([shared]),
        PerFrameFunctionalGroupsSequence=Sequence([frame0, frame1]),
    )
    np.testing.assert_allclose(read_dicom(path, frame=0), [[0.5, 0.75]], atol=1e-6)
    np.testing.assert_allclose(read_dicom(path, frame=1), [[0.5, 0.75]], atol=1e-6)  # intercept -100


def test_forced_minmax_and_percentile(make_dicom) -> None:
    ramp = np.arange(10000, dtype=np.uint16).reshape(100, 100)
    path = make_dicom(ramp, WindowCenter=10, WindowWidth=20)
    assert read_dicom(path).mean() > 0.99  # the file's window saturates almost everything
    np.testing.assert_allclose(read_dicom(path, window="minmax"), minmax(ramp), atol=1e-6)
    pct = read_dicom(path, window="percentile")
    lo, hi = np.percentile(ramp, [0.5, 99.5])
    np.testing.assert_allclose(pct, np.clip((ramp - lo) / (hi - lo), 0, 1), atol=1e-6)
    assert (pct == 0).sum() == 50 and (pct == 1).sum() == 50


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_constant_image_gives_zeros(make_dicom, photometric: str) -> None:
    path = make_dicom(np.full((4, 4), 7, np.uint16), photometric=photometric)
    for window in ("auto", "minmax", "percentile"):
        img = read_dicom(path, window=window)
        assert img.dtype == np.float32 and not img.any()


def test_apply_window_docstring_values() -> None:
    out = apply_window(np.array([-160.0, 40.0, 240.0], np.float32), 40, 400)
    np.testing.assert_allclose(out, [0, 0.5012531, 1], atol=1e-6)


# --------------------------------------------------------------------------- errors


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.dcm"
    with pytest.raises(ImageReadError, match="file not found") as info:
        read_dicom(path)
    assert info.value.path == str(path) and info.value.reason == "file not found"
    with pytest.raises(ImageReadError, match="folder"):
        read_dicom(tmp_path)


def test_text_file_renamed_dcm(tmp_path: Path) -> None:
    path = tmp_path / "notes.dcm"
    path.write_text("patient notes, not an image\n" * 20)
    with pytest.raises(ImageReadError, match="not a DICOM file") as info:
        read_image(path)
    assert str(info.value).startswith(f"{path}: ")
    with pytest.raises(ImageReadError, match="not a DICOM file"):
        read_header(path)


def test_truncated_synthetic_file(make_dicom) -> None:
    path = make_dicom(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64), name="image.dcm")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 3000])  # cut inside the pixel data
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert "pixel data shorter than the header says" in info.value.reason
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)
    assert "re-export" in info.value.fix
    path.write_bytes(data[:400])  # cut inside the header
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert "probably truncated" in info.value.reason and info.value.path == str(path)


@pytest.mark.parametrize("keep", [400, 2000, -500])
def test_truncated_compressed_file(tmp_path: Path, keep: int) -> None:
    data = Path(bundled("MR_small_jp2klossless.dcm")).read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[:keep])
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert "probably truncated" in info.value.reason


@pytest.mark.parametrize(
    "name, uid, package",
    [
        ("MR_small_jp2klossless.dcm", JPEG2000Lossless, "pylibjpeg-openjpeg"),
        ("MR_small_jpeg_ls_lossless.dcm", JPEGLSLossless, "pyjpegls"),
    ],
)
def test_missing_decoder_names_the_package(monkeypatch, name: str, uid: UID, package: str) -> None:
    decoder = get_decoder(uid)
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"pylibjpeg": ("pylibjpeg", package)})
    with pytest.raises(ImageReadError, match=f"no decoder installed.*pip install.*{package}"):
        read_image(bundled(name))


def test_unsupported_transfer_syntax(make_dicom) -> None:
    path = make_dicom(np.zeros((2, 2), np.uint8))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")  # MPEG2: no pydicom decoder
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 60])
    ds["PixelData"].VR = "OB"
    ds.save_as(path)
    with pytest.raises(ImageReadError, match="MPEG2.*cannot decode"):
        read_image(path)


def test_error_is_one_line_and_pickles() -> None:
    err = ImageReadError("a/b.dcm", "no pixel data\n  (Modality SR)", "leave it out")
    assert str(err) == "a/b.dcm: no pixel data (Modality SR); leave it out"
    again = pickle.loads(pickle.dumps(err))
    assert (again.path, again.reason, str(again)) == (err.path, err.reason, str(err))
    assert isinstance(err, ValueError)


def test_bad_window_argument(make_dicom) -> None:
    with pytest.raises(ValueError, match="window must be one of auto, minmax, percentile; got 'max'"):
        read_dicom(make_dicom(np.zeros((2, 2), np.uint8)), window="max")


# --------------------------------------------------------------------------- headers and sniffing


def test_read_header_types_and_missing_values(make_dicom) -> None:
    path = make_dicom(np.zeros((3, 5), np.int16), bits_stored=12, BodyPartExamined="CHEST", ViewPosition="")
    header = read_header(path)
    assert header == {
        "PatientID": "P001",
        "Modality": "DX",
        "BodyPartExamined": "CHEST",
        "ViewPosition": None,
        "PatientPosition": None,
        "PhotometricInterpretation": "MONOCHROME2",
        "Rows": 3,
        "Columns": 5,
        "BitsStored": 12,
        "BitsAllocated": 16,
        "PixelRepresentation": 1,
        "TransferSyntaxUID": "1.2.840.10008.1.2.1",
        "NumberOfFrames": None,
        "StudyDescription": None,
    }


def test_is_dicom(make_dicom, tmp_path: Path) -> None:
    assert is_dicom(make_dicom(np.zeros((2, 2), np.uint8), name="no_suffix"))
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 200)
    assert not is_dicom(tmp_path / "x.png")
    assert is_dicom(tmp_path / "missing.dcm")  # by suffix, as read_image would treat it
