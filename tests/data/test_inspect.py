"""medtl inspect: counts, sizes, header summaries and every unreadable file."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import yaml

from PIL import Image
from pydicom.data import get_testdata_file

from medtl.cli import main
from medtl.data.inspect import format_report, inspect_data
from medtl.data.manifest import DataError
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


# ---------------------------------------------------------------------------- issue 23: what train refuses


def _refused(capsys, path) -> str:
    """Run ``medtl inspect path``; assert exit 1 and one error line naming the file; return it."""
    assert main(["inspect", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(path) in err and "; " in err, err
    return err


def test_bare_csv_that_train_would_refuse_exits_nonzero(png_csv, capsys):
    text = png_csv.read_text()
    lines = text.splitlines()
    cases = {
        "nolabel.csv": text.replace("label,", "grade,", 1),
        "header.csv": lines[0] + "\n",
        "dup.csv": "\n".join(lines + [lines[1]]) + "\n",
        "empty.csv": "",
    }
    expected = {
        "nolabel.csv": "no label column (looked for label, class",
        "header.csv": "no images (a header row only); add one row per image",
        "dup.csv": "1 file(s) listed more than once",
        "empty.csv": "empty file, not a labels CSV; write a header row",
    }
    for name, content in cases.items():
        path = png_csv.parent / name
        path.write_text(content)
        with pytest.raises(DataError, match=re.escape(expected[name])):
            inspect_data(path, workers=1)
        assert expected[name] in _refused(capsys, path)


def test_one_class_only_is_a_problem(png_csv, capsys):
    lines = png_csv.read_text().splitlines()
    one = png_csv.parent / "one.csv"
    one.write_text("\n".join(line for line in lines if not line.split(",")[1] == "1") + "\n")
    r = inspect_data(one, workers=1)
    assert r.n_errors == 0 and not r.ok
    assert r.problems == [
        f"{one}: no films of class(es) 'positive' (counts: negative 30, positive 0); a classifier needs "
        "examples of every class: add them, or check data.classes and the label column"
    ]
    assert main(["inspect", str(one)]) == 1
    out = capsys.readouterr().out
    assert out.rstrip().endswith("check data.classes and the label column") and "problems (1):" in out


def test_semicolon_csv_is_inspected(png_csv, capsys):
    semi = png_csv.parent / "semi.csv"
    semi.write_text(png_csv.read_text().replace(",", ";"))
    r = inspect_data(semi, workers=1)
    assert r.ok and r.class_counts == {"negative": 30, "positive": 10}
    assert any("read as ';'-separated" in n for n in r.notes)


def test_image_given_as_manifest_is_refused(tmp_path, capsys):
    png = tmp_path / "zero.png"
    write_png(png, np.zeros((4, 4)))
    assert "an image file, not a labels CSV" in _refused(capsys, png)


def test_multi_frame_note_is_truthful(tmp_path):
    tree = tmp_path / "films"
    tree.mkdir()
    shutil.copyfile(get_testdata_file("rtdose.dcm"), tree / "rtdose.dcm")
    shutil.copyfile(get_testdata_file("rtdose_1frame.dcm"), tree / "single.dcm")
    r = inspect_data(tree, workers=1)
    assert r.n_errors == 1 and "set data.frame" in r.errors[0][1]
    assert any("1 multi-frame file(s): refused (listed as unreadable); set data.frame: 0" in n for n in r.notes)
    labels = tree / "labels.csv"
    labels.write_text("file,label\nrtdose.dcm,0\nsingle.dcm,1\n")
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(yaml.safe_dump({"data": {"manifest": str(labels), "frame": 0}}))
    r = inspect_data(cfg_path, workers=1)
    assert r.ok and r.sizes == {"10x10": 2}
    assert any("frame 0 of each is read (data.frame)" in n for n in r.notes)


def test_files_read_with_warnings_are_listed(tmp_path, capsys):
    rgba = np.zeros((6, 6, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "overlay.png")
    write_png(tmp_path / "plain.png", np.zeros((6, 6)))
    r = inspect_data(tmp_path, workers=1)
    assert r.ok and len(r.warnings) == 1
    path, why = r.warnings[0]
    assert path.endswith("overlay.png") and why.startswith("RGBA image with transparent pixels")
    assert "read with warnings (1 file(s)):" in format_report(r)
