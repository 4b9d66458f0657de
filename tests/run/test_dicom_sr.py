"""medtl predict --dicom-sr: one Structured Report per DICOM film, in the film's study."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("highdicom", reason="DICOM results need the dicom extra: pip install 'medtl[dicom]'")

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "run" / "fixtures"
REAL = REPO.parent / "shared" / "data" / "dicom-cxr" / "udacity-nih"


@pytest.fixture(scope="module")
def run_and_films(tmp_path_factory) -> tuple[Path, list[Path]]:
    from medtl.data.synthetic import make_sample_data

    work = tmp_path_factory.mktemp("dicom_sr")
    run = work / "run"
    shutil.copytree(FIXTURES / "train_run", run)
    make_sample_data(work / "data", n_patients=1, seed=6, image_size=(64, 64), compressed=True)
    return run, sorted((work / "data" / "images").glob("*.dcm"))[:2]


def _items(ds) -> dict[str, object]:
    """Concept meaning -> value of the root container's children."""
    out: dict[str, object] = {}
    for item in ds.ContentSequence:
        name = item.ConceptNameCodeSequence[0].CodeMeaning
        if item.ValueType == "NUM":
            mv = item.MeasuredValueSequence[0]
            out[name] = (float(mv.NumericValue), mv.MeasurementUnitsCodeSequence[0].CodeValue)
        elif item.ValueType == "TEXT":
            out[name] = item.TextValue
        elif item.ValueType == "IMAGE":
            out[name] = item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    return out


def _check_sr(path: Path, source: Path, row) -> str:
    sr, src = pydicom.dcmread(path), pydicom.dcmread(source, stop_before_pixels=True)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.22"  # Enhanced SR Storage
    assert path.name == f"{sr.SOPInstanceUID}.dcm"
    assert sr.PatientID == src.PatientID and sr.StudyInstanceUID == src.StudyInstanceUID
    assert sr.SeriesInstanceUID != src.SeriesInstanceUID and sr.Modality == "SR"
    assert sr.ConceptNameCodeSequence[0].CodeMeaning == "Imaging Measurement Report"
    items = _items(sr)
    score, unit = items["Model score: lesion"]
    assert unit == "{probability}" and score == pytest.approx(float(row["score"]), abs=1e-6)
    assert items["Decision threshold: lesion"][1] == "{probability}"
    assert items["Finding"] == row["prediction"]
    assert items["Algorithm Version"].startswith("run, medtl ") and "smallcnn" in items["Algorithm Name"]
    assert items["Source of Measurement"] == src.SOPInstanceUID
    assert "research use, not for diagnosis" in items["Comment"].lower()
    return sr.SeriesInstanceUID


def test_predict_dicom_sr_synthetic_png_and_real(run_and_films, tmp_path):
    import medtl

    run, dcms = run_and_films
    png = FIXTURES / "films" / "P0002_1.png"
    real = sorted(REAL.glob("test1.dcm")) if REAL.is_dir() else []
    df = medtl.predict(run, [*dcms, png, *real], out=tmp_path / "pred.csv", dicom_sr=tmp_path / "sr")
    rows = df.set_index("path")
    series = {_check_sr(tmp_path / "sr" / rows.loc[str(d), "dicom_sr"], d, rows.loc[str(d)]) for d in [*dcms, *real]}
    assert len(series) == 1
    assert rows.loc[str(png), "dicom_sr"].startswith("skipped: P0002_1.png is not DICOM")
    assert len(list((tmp_path / "sr").glob("*.dcm"))) == len(dcms) + len(real)
    if not real:
        pytest.skip("../shared/data/dicom-cxr absent: checked on synthetic DICOM only")


def test_cli_dicom_sr_option():
    from medtl.cli import build_parser

    args = build_parser().parse_args(["predict", "RUN", "a.dcm", "--dicom-sr", "sr"])
    assert args.dicom_sr == "sr"
