"""Tests for medtl.data.synthetic: the synthetic chest X-ray DICOM set."""

from __future__ import annotations

import csv
import importlib
import json
import runpy
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from medtl.data.synthetic import CSV_COLUMNS, make_sample_data

REPO = Path(__file__).resolve().parents[2]
Rows = list[dict[str, str]]


def _rows(csv_path: Path) -> Rows:
    with csv_path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _display(ds: pydicom.Dataset) -> np.ndarray:
    """Modality LUT, linear window (or min-max), MONOCHROME1 inversion: air dark, in [0, 1]."""
    a = ds.pixel_array.astype(np.float64)
    a = a * float(ds.get("RescaleSlope", 1.0)) + float(ds.get("RescaleIntercept", 0.0))
    if "WindowCenter" in ds:
        c, w = float(ds.WindowCenter), float(ds.WindowWidth)
        lo, hi = c - w / 2, c + w / 2
    else:
        lo, hi = a.min(), a.max()
    a = np.clip((a - lo) / (hi - lo), 0.0, 1.0)
    return 1.0 - a if ds.PhotometricInterpretation == "MONOCHROME1" else a


def _patch(img: np.ndarray, row: float, col: float, half: int = 3) -> float:
    r, c = int(row * img.shape[0]), int(col * img.shape[1])
    return float(img[r - half : r + half + 1, c - half : c + half + 1].mean())


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sample")
    make_sample_data(out, n_patients=20, seed=3)
    return out


@pytest.fixture(scope="module")
def sample_rows(sample: Path) -> Rows:
    return _rows(sample / "labels.csv")


def test_writes_expected_files_and_columns(sample: Path, sample_rows: Rows) -> None:
    assert tuple(sample_rows[0].keys()) == CSV_COLUMNS
    assert "SYNTHETIC" in (sample / "README.txt").read_text()
    assert (sample / "phi.json").is_file()
    files = sorted(p.relative_to(sample).as_posix() for p in (sample / "images").glob("*.dcm"))
    assert files == sorted(r["file"] for r in sample_rows)


def test_same_seed_gives_same_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    a = make_sample_data(tmp_path / "a", n_patients=4, seed=11)
    b = make_sample_data(tmp_path / "b", n_patients=4, seed=11)
    c = make_sample_data(tmp_path / "c", n_patients=4, seed=12)
    assert a.read_bytes() == b.read_bytes()
    for row in _rows(a):
        da, db = (pydicom.dcmread(p.parent / row["file"]) for p in (a, b))
        assert da.PixelData == db.PixelData
        np.testing.assert_array_equal(da.pixel_array, db.pixel_array)
        assert da.SOPInstanceUID == db.SOPInstanceUID
    first = _rows(a)[0]["file"]
    pa = pydicom.dcmread(a.parent / first).pixel_array
    pc = pydicom.dcmread(c.parent / first).pixel_array
    assert pa.shape != pc.shape or not np.array_equal(pa, pc)
    assert a.read_bytes() != c.read_bytes()


def test_class_balance_and_films_per_patient(sample_rows: Rows) -> None:
    by_patient: dict[str, Rows] = {}
    for row in sample_rows:
        by_patient.setdefault(row["patient_id"], []).append(row)
    assert len(by_patient) == 20
    assert {len(films) for films in by_patient.values()} <= {2, 3}
    labels = {pid: {r["label"] for r in films} for pid, films in by_patient.items()}
    assert all(len(v) == 1 for v in labels.values()), "a patient's films must share a label"
    assert sum(v == {"1"} for v in labels.values()) == 4  # prevalence 0.2 -> 4 of 20
    for row in sample_rows:
        assert row["class_name"] == ("lesion" if row["label"] == "1" else "normal")
        has_lesion = all(row[k] != "" for k in ("lesion_x", "lesion_y", "lesion_r"))
        assert has_lesion == (row["label"] == "1")


def test_all_files_decode_with_consistent_headers(sample: Path, sample_rows: Rows) -> None:
    shapes, uids = set(), set()
    for row in sample_rows:
        ds = pydicom.dcmread(sample / row["file"])
        arr = ds.pixel_array
        assert arr.shape == (ds.Rows, ds.Columns) and max(arr.shape) <= 320
        assert arr.dtype == np.uint16 and int(arr.max()) <= (1 << ds.BitsStored) - 1
        assert ds.BitsAllocated == 16 and ds.BitsStored == int(row["bits_stored"])
        assert ds.PhotometricInterpretation == row["photometric"]
        assert ds.file_meta.TransferSyntaxUID == row["transfer_syntax"]
        assert ds.PatientID == row["patient_id"]
        assert ds.BodyPartExamined == "CHEST" and ds.ViewPosition in {"PA", "AP"}
        sop = {"CR": "1.2.840.10008.5.1.4.1.1.1", "DX": "1.2.840.10008.5.1.4.1.1.1.1"}
        assert ds.SOPClassUID == sop[ds.Modality] == ds.file_meta.MediaStorageSOPClassUID
        assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
        shapes.add(arr.shape)
        uids.add(ds.SOPInstanceUID)
    assert len(uids) == len(sample_rows)
    assert len(shapes) > 1, "sizes should vary so letterboxing is exercised"


def test_header_variety(sample: Path, sample_rows: Rows) -> None:
    headers = [pydicom.dcmread(sample / r["file"], stop_before_pixels=True) for r in sample_rows]
    assert {h.PhotometricInterpretation for h in headers} == {"MONOCHROME1", "MONOCHROME2"}
    assert {h.BitsStored for h in headers} == {12, 16}
    assert {h.file_meta.TransferSyntaxUID for h in headers} == {
        ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, RLELossless,
    }
    assert {h.Modality for h in headers} == {"CR", "DX"}
    rescaled = sum("RescaleSlope" in h for h in headers)
    windowed = sum("WindowCenter" in h for h in headers)
    assert 0 < rescaled < len(headers)
    assert len(headers) / 2 < windowed < len(headers)


def test_anatomy_displays_correctly_and_monochrome1_is_stored_inverted(
    sample: Path, sample_rows: Rows
) -> None:
    seen = set()
    for row in (r for r in sample_rows if r["label"] == "0"):
        ds = pydicom.dcmread(sample / row["file"])
        raw = ds.pixel_array.astype(np.float64)
        raw_lung, raw_mediastinum = _patch(raw, 0.38, 0.30), _patch(raw, 0.40, 0.50)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            assert raw_lung > raw_mediastinum, f"{row['file']}: MONOCHROME1 not stored inverted"
        else:
            assert raw_lung < raw_mediastinum, row["file"]
        img = _display(ds)
        air, mediastinum = np.percentile(img, 2), _patch(img, 0.40, 0.50)
        lungs = _patch(img, 0.38, 0.30), _patch(img, 0.38, 0.70)
        assert air < 0.15, f"{row['file']}: no dark air"
        assert all(air + 0.05 < lung < mediastinum - 0.2 for lung in lungs), row["file"]
        assert mediastinum < 0.99, f"{row['file']}: window saturates the mediastinum"
        seen.add(ds.PhotometricInterpretation)
    assert seen == {"MONOCHROME1", "MONOCHROME2"}


def test_lesion_is_a_bright_nodule_inside_a_lung(sample: Path, sample_rows: Rows) -> None:
    positives = [r for r in sample_rows if r["label"] == "1"]
    assert positives
    for row in positives:
        img = _display(pydicom.dcmread(sample / row["file"]))
        x, y, r = int(row["lesion_x"]), int(row["lesion_y"]), float(row["lesion_r"])
        assert 0.06 * img.shape[1] * 0.8 <= r <= 0.10 * img.shape[1]
        yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
        d = np.hypot(xx - x, yy - y)
        inside, ring = img[d < 0.6 * r].mean(), img[(d > 1.3 * r) & (d < 1.8 * r)].mean()
        assert inside > ring + 0.15, f"{row['file']}: lesion {inside:.2f} vs ring {ring:.2f}"
        # A sphere's shadow, not a flat disc: the centre is brighter than the rim.
        centre, rim = img[d < 0.3 * r].mean(), img[(d > 0.7 * r) & (d < 0.9 * r)].mean()
        assert centre > rim + 0.1, f"{row['file']}: centre {centre:.2f} vs rim {rim:.2f}"
        # The ring around the lesion is lung: darker than the mediastinum.
        assert ring < _patch(img, 0.40, 0.50) - 0.15, row["file"]


def test_compression_is_lossless_and_optional(tmp_path: Path) -> None:
    packed = make_sample_data(tmp_path / "packed", n_patients=6, seed=8)
    plain = make_sample_data(tmp_path / "plain", n_patients=6, seed=8, compressed=False)
    rows_packed, rows_plain = _rows(packed), _rows(plain)
    syntaxes = {r["transfer_syntax"] for r in rows_packed}
    assert {JPEG2000Lossless, RLELossless} <= syntaxes
    uncompressed = {ExplicitVRLittleEndian, ImplicitVRLittleEndian}
    assert {r["transfer_syntax"] for r in rows_plain} <= uncompressed
    for a, b in zip(rows_packed, rows_plain):
        assert {k: v for k, v in a.items() if k != "transfer_syntax"} == {
            k: v for k, v in b.items() if k != "transfer_syntax"
        }
        np.testing.assert_array_equal(
            pydicom.dcmread(packed.parent / a["file"]).pixel_array,
            pydicom.dcmread(plain.parent / b["file"]).pixel_array,
        )


def test_phi_is_planted_in_every_header_and_not_in_labels(
    sample: Path, sample_rows: Rows
) -> None:
    phi = json.loads((sample / "phi.json").read_text())
    assert phi["strings"] and all("TESTPHI" in p["PatientName"] for p in phi["patients"].values())
    found = {s: False for s in phi["strings"]}
    for row in sample_rows:
        ds = pydicom.dcmread(sample / row["file"], stop_before_pixels=True)
        planted = phi["patients"][row["patient_id"]]
        assert str(ds.PatientName) == planted["PatientName"]
        assert ds.PatientBirthDate == planted["PatientBirthDate"]
        assert ds.InstitutionName == planted["InstitutionName"]
        assert str(ds.ReferringPhysicianName) == planted["ReferringPhysicianName"]
        assert ds.AccessionNumber in planted["AccessionNumber"]
        raw = (sample / row["file"]).read_bytes()
        for s in found:
            found[s] = found[s] or s.encode() in raw
    assert all(found.values()), [s for s, ok in found.items() if not ok]
    labels_text = (sample / "labels.csv").read_text()
    assert not [s for s in phi["strings"] if s in labels_text]


def test_medtl_io_reads_the_set(sample: Path, sample_rows: Rows) -> None:
    io = importlib.import_module("medtl.io")
    if not hasattr(io, "read_image"):
        pytest.skip("medtl.io.read_image is not there yet")
    for row in sample_rows:
        img = io.read_image(sample / row["file"])
        assert img.dtype == np.float32 and 0.0 <= img.min() and img.max() <= 1.0
        if row["label"] == "0":
            assert _patch(img, 0.38, 0.30) < _patch(img, 0.40, 0.50) - 0.2, row["file"]


def test_script_writes_a_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = runpy.run_path(str(REPO / "scripts" / "make_sample_data.py"))
    assert script["main"](["--out", str(tmp_path), "--patients", "2", "--seed", "1"]) == 0
    assert "labels.csv" in capsys.readouterr().out
    assert len(_rows(tmp_path / "labels.csv")) in {4, 5, 6}


@pytest.mark.parametrize(
    "kwargs", [{"n_patients": 0}, {"prevalence": 1.5}, {"image_size": (32, 32)}]
)
def test_rejects_bad_arguments(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        make_sample_data(tmp_path, **kwargs)
