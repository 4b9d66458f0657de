"""medtl explain --dicom-out: overlays as Secondary Captures in the source film's study."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("highdicom", reason="DICOM results need the dicom extra: pip install 'medtl[dicom]'")

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "run" / "fixtures"
REAL = REPO.parent / "shared" / "data" / "dicom-cxr" / "rsna"


@pytest.fixture(scope="module")
def films(tmp_path_factory) -> tuple[Path, list[Path]]:
    """A tiny trained run (the old-run fixture) and synthetic DICOM films to explain."""
    from medtl.data.synthetic import make_sample_data

    work = tmp_path_factory.mktemp("dicom_out")
    run = work / "run"
    shutil.copytree(FIXTURES / "train_run", run)
    make_sample_data(work / "data", n_patients=1, seed=5, image_size=(64, 64), compressed=False)
    return run, sorted((work / "data" / "images").glob("*.dcm"))[:2]


def _check_sc(path: Path, source: Path, series: str | None = None) -> str:
    sc, src = pydicom.dcmread(path), pydicom.dcmread(source, stop_before_pixels=True)
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
    assert path.name == f"{sc.SOPInstanceUID}.dcm"
    for key in ("PatientID", "PatientName", "StudyInstanceUID"):
        assert sc.get(key) == src.get(key), key
    assert sc.SeriesInstanceUID != src.SeriesInstanceUID
    if series is not None:
        assert sc.SeriesInstanceUID == series
    ref = sc.SourceImageSequence[0]
    assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (src.SOPClassUID, src.SOPInstanceUID)
    assert sc.BurnedInAnnotation == "YES" and list(sc.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert "research use, not for diagnosis" in sc.DerivationDescription
    px = sc.pixel_array
    assert sc.PhotometricInterpretation == "RGB" and px.ndim == 3 and px.shape[1] == src.Columns
    band = px[src.Rows:]  # the caption band below the film: black with white letters
    assert band.shape[0] >= 16 and (band > 200).any() and (band == 0).mean() > 0.5
    return sc.SeriesInstanceUID


def test_caption_band_adds_rows_with_text():
    from medtl.explain.dicom_out import caption_band

    out = caption_band(np.full((120, 90, 3), 128, np.uint8))
    assert out.shape[1:] == (90, 3) and out.shape[0] >= 136 and (out[:120] == 128).all() and (out[120:] > 200).any()


def test_explain_dicom_out_synthetic_and_png(films, tmp_path):
    import medtl

    run, dcms = films
    png = FIXTURES / "films" / "P0001_1.png"
    df = medtl.explain(run, [*dcms, png], out=tmp_path / "cams", dicom_out=tmp_path / "pacs")
    written = sorted((tmp_path / "pacs").glob("*.dcm"))
    assert len(written) == len(dcms)
    rows = df.set_index("path")
    series = {_check_sc(tmp_path / "pacs" / rows.loc[str(d), "dicom_out"], d) for d in dcms}
    assert len(series) == 1  # one new series per call
    assert rows.loc[str(png), "dicom_out"].startswith("skipped: P0001_1.png is not DICOM")
    assert rows.loc[str(png), "error"] in ("", np.nan) or rows.loc[str(png), "error"] != rows.loc[str(png), "error"]
    again = medtl.explain(run, dcms[:1], out=tmp_path / "cams2", dicom_out=tmp_path / "pacs")
    assert _check_sc(tmp_path / "pacs" / again["dicom_out"].iloc[0], dcms[0]) not in series


def test_explain_dicom_out_real_films(films, tmp_path):
    if not REAL.is_dir():
        pytest.skip(f"{REAL} absent: the real DICOM films live in ../shared/data (see its README)")
    import medtl

    run, _ = films
    real = sorted(REAL.glob("*.dcm"))[:1]  # a JPEG-compressed CR film from the RSNA challenge
    df = medtl.explain(run, real, out=tmp_path / "cams", dicom_out=tmp_path / "pacs")
    _check_sc(tmp_path / "pacs" / df["dicom_out"].iloc[0], real[0])


def test_cli_dicom_out_option_reaches_api():
    from medtl.cli import build_parser

    args = build_parser().parse_args(["explain", "RUN", "a.dcm", "--out", "cams", "--dicom-out", "pacs"])
    assert args.dicom_out == "pacs"
