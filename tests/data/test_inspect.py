"""medtl inspect: counts, sizes, header summaries and every unreadable file."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import yaml

from medtl.data.inspect import format_report, inspect_data
from tests.data._helpers import make_cfg, make_png_dataset, write_png


def test_csv_counts_patients_sizes(png_csv):
    r = inspect_data(png_csv, workers=1)
    assert r.n_files == 40 and r.n_errors == 0
    assert r.class_counts == {"negative": 30, "positive": 10}
    assert r.n_patients == 20 and r.films_per_patient == {2: 20}
    assert r.patient_source == "column 'patient_id'"
    assert r.sizes == {"40x32": 40} and r.formats == {"PNG": 40}
    text = format_report(r)
    assert "files: 40   unreadable: 0" in text and "all files decode" in text
    assert "negative" in text and "75.0%" in text


def test_every_unreadable_file_is_listed(png_csv):
    images = sorted((png_csv.parent / "images").glob("*.png"))
    images[0].write_bytes(b"not a png")
    images[5].unlink()
    r = inspect_data(png_csv, workers=2)
    assert r.n_errors == 2
    bad = dict(r.errors)
    assert set(bad) == {str(images[0]), str(images[5])}
    assert "not found" in bad[str(images[5])]
    text = format_report(r)
    assert "unreadable files (2):" in text and str(images[0]) in text


def test_duplicates_and_mixed_labels_are_noted(tmp_path):
    csv_path = make_png_dataset(tmp_path / "ds", n_patients=6, films=1, size=(8, 8))
    images = csv_path.parent / "images"
    shutil.copyfile(images / "P000_0.png", images / "P001_0.png")
    r = inspect_data(csv_path, workers=1)
    assert len(r.duplicate_groups) == 1 and len(r.duplicate_groups[0]) == 2
    assert any("1 across different patient ids" in n for n in r.notes)


def test_folder_tree_and_config(tmp_path):
    for cls, n in [("NORMAL", 3), ("PNEUMONIA", 2)]:
        for i in range(n):
            write_png(tmp_path / "tree" / cls / f"{i}.png", np.zeros((10 + i, 12)))
    r = inspect_data(tmp_path / "tree", workers=1)
    assert r.class_counts == {"NORMAL": 3, "PNEUMONIA": 2} and r.n_patients == 5
    assert r.sizes == {"10x12": 2, "11x12": 2, "12x12": 1}
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(yaml.safe_dump({"data": {"manifest": "tree", "classes": ["PNEUMONIA", "NORMAL"]}}))
    r2 = inspect_data(cfg_path, workers=1)
    assert r2.class_counts == {"PNEUMONIA": 2, "NORMAL": 3}


def test_explicit_config_applies_to_target(png_csv):
    cfg = make_cfg(png_csv, data={"patient_column": "site"})
    r = inspect_data(png_csv, cfg=cfg, workers=1)
    assert r.n_patients == 2 and r.films_per_patient == {20: 2}
    assert r.mixed_label_patients == ["B"]  # positives are even-numbered patients, all at site B


def test_unlabelled_folder(tmp_path):
    write_png(tmp_path / "a.png", np.zeros((5, 5)))
    write_png(tmp_path / "sub" / "b.png", np.zeros((5, 5)))
    r = inspect_data(tmp_path, workers=1)
    assert r.n_files == 2 and r.class_counts == {} and "classes: (no labels)" in format_report(r)


def test_dicom_header_summary(dicom_cxr_dir):
    r = inspect_data(dicom_cxr_dir, workers=2)
    assert r.n_files == 8 and r.n_errors == 0
    assert r.formats == {"DICOM": 8}
    assert r.dicom["Modality"]["CT"] == 1
    assert r.dicom["PhotometricInterpretation"] == {"MONOCHROME2": 7, "MONOCHROME1": 1}
    assert any("JPEG Baseline" in k for k in r.dicom["TransferSyntaxUID"])
    assert any("modality not CR/DX" in n for n in r.notes)
    assert any("body part not CHEST" in n and "RIBCAGE" in n for n in r.notes)
    text = format_report(r)
    assert "DICOM headers:" in text and "MONOCHROME1" in text


def test_synthetic_sample_data(tmp_path):
    synthetic = pytest.importorskip("medtl.data.synthetic")
    if not hasattr(synthetic, "make_sample_data"):
        pytest.skip("medtl.data.synthetic.make_sample_data not written yet")
    csv_path = synthetic.make_sample_data(tmp_path / "sample", n_patients=6, seed=0)
    r = inspect_data(csv_path.parent, workers=2)
    assert r.n_errors == 0 and r.n_files == len(csv_path.read_text().splitlines()) - 1
    assert r.n_patients == 6 and sum(r.class_counts.values()) == r.n_files
    assert r.dicom["Modality"]
