"""Manifests from a CSV or a class-per-folder tree, and their one-line errors."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medtl.config import ConfigError
from medtl.data.manifest import DataError, load_manifest
from tests.data._helpers import make_cfg, write_png


def _csv(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def test_csv_manifest_columns_and_targets(png_csv):
    m = load_manifest(make_cfg(png_csv))
    assert len(m) == 40 and m.task == "binary"
    assert m.classes == ["negative", "positive"]
    assert list(m.df.columns[:3]) == ["path", "patient_id", "label"]
    assert "site" in m.df.columns and "file" in m.df.columns
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in m.paths)
    assert m.df["patient_id"].iloc[0] == "P000"
    t = m.targets()
    assert t.shape == (40, 1) and t.dtype == np.float32
    assert t[:, 0].tolist() == m.df["label"].astype(float).tolist()
    assert m.class_counts().tolist() == [30, 10]
    sub = m.subset([2, 3])
    assert len(sub) == 2 and sub.df.index.tolist() == [0, 1] and sub.paths == m.paths[2:4]


def test_class_names_and_root(tmp_path):
    write_png(tmp_path / "imgs" / "a.png", np.zeros((8, 8)))
    write_png(tmp_path / "imgs" / "b.png", np.zeros((8, 8)))
    csv_path = _csv(tmp_path / "meta" / "l.csv", [{"file": "a.png", "label": "normal"}, {"file": "b.png", "label": "pneumonia"}])
    cfg = make_cfg(csv_path, data={"root": str(tmp_path / "imgs"), "patient_column": "none", "classes": ["normal", "pneumonia"]})
    m = load_manifest(cfg)
    assert m.df["label"].tolist() == [0, 1]
    assert m.df["patient_id"].nunique() == 2  # each image is its own patient


def test_multiclass_one_hot(tmp_path):
    rows = []
    for i, lab in enumerate(["cat", "dog", "emu", "dog"]):
        write_png(tmp_path / f"{i}.png", np.zeros((8, 8)))
        rows.append({"file": f"{i}.png", "label": lab, "patient_id": i})
    cfg = make_cfg(_csv(tmp_path / "l.csv", rows), task="multiclass", train={"loss": {"name": "cce"}}, data={"classes": ["dog", "cat", "emu"]})
    m = load_manifest(cfg)
    assert m.df["label"].tolist() == [1, 0, 2, 0]
    assert m.targets().tolist() == [[0, 1, 0], [1, 0, 0], [0, 0, 1], [1, 0, 0]]
    assert m.df["patient_id"].tolist() == ["0", "1", "2", "3"]


def test_multilabel_columns(tmp_path):
    rows = []
    for i, (a, b) in enumerate([(0, 1), (1, 1), (0, 0)]):
        write_png(tmp_path / f"{i}.png", np.zeros((8, 8)))
        rows.append({"file": f"{i}.png", "effusion": a, "nodule": b, "patient_id": i})
    cfg = make_cfg(_csv(tmp_path / "l.csv", rows), task="multilabel", data={"label_column": ["effusion", "nodule"]})
    m = load_manifest(cfg)
    assert m.classes == ["effusion", "nodule"]
    assert m.targets().tolist() == [[0, 1], [1, 1], [0, 0]]
    assert m.class_counts().tolist() == [1, 2]


def test_multilabel_bad_values_of_every_column_in_one_error(tmp_path):
    for i in range(3):
        write_png(tmp_path / f"{i}.png", np.zeros((8, 8)))
    rows = [{"file": "0.png", "a": 2, "b": 1, "patient_id": 1}, {"file": "1.png", "a": 0, "b": -1, "patient_id": 2},
            {"file": "2.png", "a": 1, "b": "", "patient_id": 3}]
    cfg = make_cfg(_csv(tmp_path / "l.csv", rows), task="multilabel", data={"label_column": ["a", "b"]})
    with pytest.raises(DataError, match=r"label column 'a' has 2 on line 2 \(1 bad row\(s\)\); 'b' has -1(\.0)? on line 3 "
                                        r"\(2 bad row\(s\)\); multilabel columns must hold 0 or 1") as err:
        load_manifest(cfg)
    assert "\n" not in str(err.value)


def _nih_csv(tmp_path: Path, labels: list[str]) -> Path:
    rows = []
    for i, lab in enumerate(labels):
        write_png(tmp_path / f"{i}.png", np.zeros((8, 8)))
        rows.append({"Image Index": f"{i}.png", "Finding Labels": lab, "patient_id": i})
    return _csv(tmp_path / "Data_Entry.csv", rows)


def _nih_cfg(csv_path: Path, classes=("Effusion", "Mass")):
    return make_cfg(csv_path, task="multilabel", data={
        "path_column": "Image Index", "label_column": "Finding Labels", "label_separator": "|",
        "classes": list(classes)})


def test_multilabel_from_one_separated_column(tmp_path):
    """NIH ChestX-ray14 style: names joined by '|'; names outside data.classes are no finding,
    and how often each occurred is said, so a misspelt class would show there."""
    csv_path = _nih_csv(tmp_path, ["Effusion|Mass", "No Finding", "Mass", "Hernia|Effusion", " Effusion "])
    m = load_manifest(_nih_cfg(csv_path))
    assert m.task == "multilabel" and m.classes == ["Effusion", "Mass"]
    assert m.targets().tolist() == [[1, 1], [0, 0], [0, 1], [1, 0], [1, 0]]
    assert m.class_counts().tolist() == [3, 2]
    assert m.notes == ["names in 'Finding Labels' outside data.classes, read as no finding: Hernia 1, No Finding 1"]
    assert m.subset([0, 1]).notes == m.notes


def test_separated_labels_errors(tmp_path):
    csv_path = _nih_csv(tmp_path, ["Effusion", "", "Mass"])
    with pytest.raises(DataError, match=r"empty 'Finding Labels' on line\(s\) 3"):
        load_manifest(_nih_cfg(csv_path))
    csv_path = _nih_csv(tmp_path, ["Effusion", "Mass"])
    with pytest.raises(ConfigError, match=r"data.classes: no row of 'Finding Labels' .* names 'Efusion'; check the "
                                          r"spelling against the names found: Effusion, Mass"):
        load_manifest(_nih_cfg(csv_path, ("Efusion", "Mass")))
    bad = [
        ({"task": "binary", "data": {"label_separator": "|"}}, "data.label_separator: only for task multilabel"),
        ({"task": "multilabel", "data": {"label_column": ["a", "b"], "label_separator": "|"}},
         "needs one data.label_column"),
        ({"task": "multilabel", "data": {"label_column": "Finding Labels", "label_separator": "|"}},
         "data.classes: missing; with data.label_separator list the findings"),
        ({"task": "multilabel", "data": {"label_column": "Finding Labels"}}, "or one column of names with"),
        ({"task": "multilabel", "data": {"label_column": "Finding Labels", "label_separator": "", "classes": ["a"]}},
         "data.label_separator: empty; quote it"),
    ]
    for sections, msg in bad:
        with pytest.raises(ConfigError, match=msg):
            make_cfg(csv_path, **sections)


def test_folder_tree(tmp_path):
    for cls, n in [("NORMAL", 3), ("PNEUMONIA", 2)]:
        for i in range(n):
            write_png(tmp_path / "tree" / cls / f"{i}.png", np.zeros((8, 8)))
    (tmp_path / "tree" / "NORMAL" / "notes.txt").write_text("not an image")
    m = load_manifest(make_cfg(tmp_path / "tree", data={"patient_column": None}))
    assert m.classes == ["NORMAL", "PNEUMONIA"]
    assert m.df["label"].tolist() == [0, 0, 0, 1, 1]
    assert len(m) == 5  # the .txt file is not an image
    m2 = load_manifest(make_cfg(tmp_path / "tree", data={"patient_column": None, "classes": ["PNEUMONIA", "NORMAL"]}))
    assert m2.df.loc[m2.df["class_name"] == "PNEUMONIA", "label"].unique().tolist() == [0]


def test_folder_tree_class_mismatch(tmp_path):
    for cls in ("a", "b"):
        write_png(tmp_path / "t" / cls / "0.png", np.zeros((8, 8)))
    with pytest.raises(ConfigError, match=r"data.classes: \['a', 'c'\] does not match the sub-folders"):
        load_manifest(make_cfg(tmp_path / "t", data={"patient_column": None, "classes": ["a", "c"]}))


def test_missing_column_lists_columns(png_csv):
    with pytest.raises(ConfigError, match=r"data.label_column: column 'diagnosis' not in .*columns: file, label, patient_id, site"):
        load_manifest(make_cfg(png_csv, data={"label_column": "diagnosis"}))
    with pytest.raises(ConfigError, match=r"data.patient_column: column 'pid'"):
        load_manifest(make_cfg(png_csv, data={"patient_column": "pid"}))


def test_unknown_label_names_line_and_value(tmp_path):
    rows = [{"file": f"{i}.png", "label": v, "patient_id": i} for i, v in enumerate(["normal", "pneumonia", "pnuemonia"])]
    for r in rows:
        write_png(tmp_path / r["file"], np.zeros((8, 8)))
    cfg = make_cfg(_csv(tmp_path / "l.csv", rows), data={"classes": ["normal", "pneumonia"]})
    with pytest.raises(DataError, match=r"line 4: unknown label 'pnuemonia' in column 'label'; expected one of normal, pneumonia"):
        load_manifest(cfg)


def test_binary_int_out_of_range(png_csv):
    text = png_csv.read_text().replace("\nimages/P001_0.png,0,", "\nimages/P001_0.png,2,")
    png_csv.write_text(text)
    with pytest.raises(DataError, match=r"line 4: unknown label '2'"):
        load_manifest(make_cfg(png_csv))


def test_binary_names_without_classes(tmp_path):
    write_png(tmp_path / "0.png", np.zeros((8, 8)))
    cfg = make_cfg(_csv(tmp_path / "l.csv", [{"file": "0.png", "label": "sick", "patient_id": 1}]))
    with pytest.raises(ConfigError, match=r"data.classes: needed to tell which label .* is positive \(values: sick\)"):
        load_manifest(cfg)


def test_all_missing_files_are_listed(png_csv):
    for name in ("P001_0.png", "P003_1.png", "P007_0.png"):
        (png_csv.parent / "images" / name).unlink()
    with pytest.raises(DataError) as err:
        load_manifest(make_cfg(png_csv))
    msg = str(err.value)
    assert "3 of 40 listed file(s) not found" in msg and "\n" not in msg
    for name in ("P001_0.png", "P003_1.png", "P007_0.png"):
        assert name in msg
    m = load_manifest(make_cfg(png_csv), check_files=False)
    assert len(m) == 40


def test_empty_manifest(tmp_path):
    p = tmp_path / "l.csv"
    p.write_text("file,label,patient_id\n")
    with pytest.raises(DataError, match="the manifest has no images"):
        load_manifest(make_cfg(p))


def test_blank_patient_id_is_an_error(png_csv):
    text = png_csv.read_text().replace(",P002,", ",,")
    png_csv.write_text(text)
    with pytest.raises(DataError, match=r"column 'patient_id' \(data.patient_column\) is empty on line\(s\) 6, 7"):
        load_manifest(make_cfg(png_csv))


def test_duplicate_rows_rejected(png_csv):
    lines = png_csv.read_text().splitlines()
    png_csv.write_text("\n".join(lines + [lines[1]]) + "\n")
    with pytest.raises(DataError, match=r"1 file\(s\) listed more than once: .*P000_0.png"):
        load_manifest(make_cfg(png_csv))


def test_reserved_column_names_are_kept(tmp_path):
    write_png(tmp_path / "0.png", np.zeros((8, 8)))
    rows = [{"file": "0.png", "label": 7, "diagnosis": "positive", "patient_id": "x"}]
    cfg = make_cfg(_csv(tmp_path / "l.csv", rows), data={"label_column": "diagnosis", "classes": ["negative", "positive"]})
    m = load_manifest(cfg)
    assert m.df["label"].tolist() == [1] and m.df["label_csv"].tolist() == [7]


def test_dicom_patient_ids(dicom_cxr_dir, tmp_path):
    rows = [{"file": str(p), "label": 0} for p in sorted((dicom_cxr_dir / "udacity-nih").glob("test[12].dcm"))]
    cfg = make_cfg(_csv(tmp_path / "l.csv", rows), cache_dir=tmp_path / "cache",
                   data={"patient_column": "dicom:PatientID"})
    m = load_manifest(cfg)
    raw = [str(pydicom.dcmread(p, stop_before_pixels=True).PatientID) for p in m.paths]
    ids = m.df["patient_id"].tolist()
    # Header patient ids are PHI: only salted pseudonyms, the same for the same patient.
    assert all(i.startswith("pid-") and len(i) == 16 for i in ids)
    assert not set(ids) & set(raw)
    assert (ids[0] == ids[1]) == (raw[0] == raw[1])
    assert load_manifest(cfg).df["patient_id"].tolist() == ids  # stable: the salt stays in the cache
    assert (tmp_path / "cache" / "patient-id.salt").stat().st_mode & 0o077 == 0
    other = make_cfg(cfg.data.manifest, cache_dir=tmp_path / "other", data={"patient_column": "dicom:PatientID"})
    assert load_manifest(other).df["patient_id"].tolist() != ids  # another salt, other pseudonyms
    with pytest.raises(ConfigError, match="dicom:Nonsense is not a header field"):
        load_manifest(make_cfg(cfg.data.manifest, data={"patient_column": "dicom:Nonsense"}))


def test_dicom_patient_id_missing_for_png(png_csv):
    with pytest.raises(DataError, match=r"no DICOM PatientID in 40 file\(s\)"):
        load_manifest(make_cfg(png_csv, data={"patient_column": "dicom:PatientID"}))


def test_ids_and_paths_stay_text(tmp_path):
    from PIL import Image

    Image.new("L", (8, 8)).save(tmp_path / "123", format="PNG")  # PACS exports: bare numeric names
    cfg = make_cfg(_csv(tmp_path / "l.csv", [{"file": 123, "label": 1, "patient_id": "007"}]))
    m = load_manifest(cfg)
    assert m.df["patient_id"].tolist() == ["007"] and m.paths == [str(tmp_path / "123")]


def test_semicolon_and_tab_separated_csv_are_read_with_a_note(png_csv):
    text = png_csv.read_text()
    for sep, name in ((";", "semi.csv"), ("\t", "tab.csv")):
        path = png_csv.parent / name
        path.write_text(text.replace(",", sep))
        m = load_manifest(make_cfg(path))
        assert len(m) == 40 and m.class_counts().tolist() == [30, 10]
        assert any(f"{name} read as {sep!r}-separated" in n for n in m.notes)


def test_empty_binary_and_image_files_are_not_csv(tmp_path):
    empty = tmp_path / "labels.csv"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=r"labels.csv: empty file, not a labels CSV; write a header row"):
        load_manifest(make_cfg(empty))
    xlsx = tmp_path / "labels.xlsx"
    xlsx.write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    with pytest.raises(DataError, match=r"labels.xlsx: a binary file .*not a labels CSV.*save a spreadsheet as CSV"):
        load_manifest(make_cfg(xlsx))
    png = tmp_path / "zero.png"
    write_png(png, np.zeros((4, 4)))
    with pytest.raises(DataError, match=r"zero.png: an image file, not a labels CSV"):
        load_manifest(make_cfg(png))
