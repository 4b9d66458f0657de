"""Tests for ``medtl init``: the starter config fits the data, loads, and explains itself."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from medtl.cli import main
from medtl.config import config_from_dict, load_config
from medtl.data.manifest import load_manifest
from medtl.init import DatasetSurvey, starter_config, survey_dataset, write_starter_config
from tests.data._helpers import write_png


@pytest.fixture(scope="module")
def dicom_csv(tmp_path_factory) -> Path:
    """labels.csv of 12 synthetic patients (DICOM, 64 px)."""
    from medtl.data.synthetic import make_sample_data

    return make_sample_data(tmp_path_factory.mktemp("init_dicom"), n_patients=12, seed=3,
                            image_size=(64, 64), prevalence=0.4)


def _png_tree(root: Path, counts: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for cls, n in counts.items():
        for i in range(n):
            write_png(root / cls / f"{cls}_{i}.png", rng.random((40, 32)).astype(np.float32))
    return root


def _assert_cv_can_split(manifest, cfg) -> None:
    """The folds and validation split that medtl cv will make from ``cfg`` all exist."""
    from medtl.data.splits import patient_holdout, patient_kfold

    for train_idx, _ in patient_kfold(manifest, cfg.evaluate.folds, cfg.seed):
        patient_holdout(manifest.subset(train_idx), cfg.data.val_fraction, cfg.seed)


def _comments(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if "#" in line)


def test_labels_csv_gives_a_config_that_fits_it(dicom_csv, tmp_path):
    out = write_starter_config(dicom_csv, tmp_path / "cfg" / "config.yaml")
    cfg = load_config(out)
    df = pd.read_csv(dicom_csv)
    counts = df["label"].value_counts()

    assert Path(cfg.data.manifest) == dicom_csv.resolve()
    assert (cfg.task, cfg.data.path_column, cfg.data.label_column) == ("binary", "file", "label")
    assert cfg.data.patient_column == "patient_id"
    assert cfg.data.classes == ["normal", "lesion"]  # from the class_name column, 0 -> normal
    assert cfg.model.backbone == "mobilenetv2" and cfg.model.weights == "imagenet"
    assert [s.unfreeze for s in cfg.train.stages] == ["head", 1]
    ratio = counts.max() / counts.min()
    assert cfg.train.loss.class_weight == ("balanced" if ratio > 1.5 else "none")
    assert cfg.train.loss.name == "bce"
    assert (cfg.report.cam, cfg.report.compare) == ("gradcam", "occlusion")  # Grad-CAM checked against occlusion
    manifest = load_manifest(cfg)
    assert len(manifest) == len(df)
    _assert_cv_can_split(manifest, cfg)

    text = out.read_text()
    notes = _comments(text)
    assert f"Dataset: {len(df)} images, {df['patient_id'].nunique()} patients" in notes
    assert f"normal {counts[0]}, lesion {counts[1]}" in notes
    assert "positive class: 'lesion'" in notes
    assert f"{len(df)} images (< 300)" in notes
    assert "splits keep a patient's films together" in notes
    assert "imbalance" in notes or "balanced enough" in notes
    # The manifest path is relative to the config's folder, as the loader resolves it.
    rel = os.path.relpath(dicom_csv, out.parent)
    assert yaml.safe_load(text)["data"]["manifest"] == rel and not Path(rel).is_absolute()


def test_png_tree_without_patients_warns_and_puts_normal_first(tmp_path):
    tree = _png_tree(tmp_path / "films", {"effusion": 4, "normal": 10})
    out = write_starter_config(tree, tmp_path / "config.yaml")
    cfg = load_config(out)
    text = out.read_text()

    assert cfg.task == "binary"
    assert cfg.data.classes == ["normal", "effusion"]  # "normal" is the negative class
    assert cfg.data.patient_column is None
    assert "path_column" not in yaml.safe_load(text)["data"]  # a folder tree has no columns
    assert cfg.train.loss.class_weight == "balanced"  # 10:4 = 2.5
    # 4 effusion "patients" (one per image): 4 test folds, and the 3 left in each fold's
    # training part fill a 3-part (0.33) validation split.
    assert (cfg.evaluate.folds, cfg.data.val_fraction) == (4, 0.33)
    assert "WARNING: no patient ids found" in text
    assert "too optimistic" in text
    assert "PNG/JPEG: the full bit-depth range" in text
    m = load_manifest(cfg)
    assert m.class_counts().tolist() == [10, 4]
    _assert_cv_can_split(m, cfg)


def test_dicom_tree_takes_patients_from_the_headers(dicom_csv, tmp_path):
    df = pd.read_csv(dicom_csv)
    for row in df.itertuples():
        dest = tmp_path / "tree" / row.class_name / Path(row.file).name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(dicom_csv.parent / row.file, dest)
    out = write_starter_config(tmp_path / "tree", tmp_path / "config.yaml")
    cfg = load_config(out)

    assert cfg.data.patient_column == "dicom:PatientID"
    assert cfg.data.classes == ["normal", "lesion"]
    m = load_manifest(cfg)
    assert m.df["patient_id"].nunique() == df["patient_id"].nunique()
    assert f"{df['patient_id'].nunique()} patients" in out.read_text()
    assert "DICOM VOI LUT" in out.read_text()


def _films_csv(root: Path, name: str, n_patients: int, seed: int, row) -> Path:
    """Two 32 px PNG films per patient and a CSV of ``row(patient, file)`` dicts."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        for f in range(2):
            file = f"img/P{p}_{f}.png"
            write_png(root / file, rng.random((32, 32)).astype(np.float32))
            rows.append(row(p, file))
    with (root / name).open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root / name


def test_several_01_columns_make_a_multilabel_config(tmp_path):
    csv_path = _films_csv(tmp_path, "findings.csv", 10, 1, lambda p, file: {
        "file": file, "patient_id": f"P{p}", "atelectasis": int(p % 2 == 0), "effusion": int(p % 4 == 0),
        "site": "A"})
    out = write_starter_config(csv_path, tmp_path / "config.yaml")
    cfg = load_config(out)

    assert cfg.task == "multilabel"
    assert cfg.data.label_column == ["atelectasis", "effusion"]
    assert cfg.data.classes is None
    assert cfg.train.loss.class_weight == "balanced"  # effusion: 6 of 20 films
    assert (cfg.evaluate.folds, cfg.data.val_fraction) == (3, 0.5)  # 3 patients with effusion
    assert "only 3 patients with 'effusion'" in out.read_text()


def test_three_class_folders_make_a_multiclass_config(tmp_path):
    tree = _png_tree(tmp_path / "films", {"covid": 6, "normal": 6, "viral": 6})
    cfg = load_config(write_starter_config(tree, tmp_path / "config.yaml"))
    assert cfg.task == "multiclass"
    assert cfg.data.classes == ["covid", "normal", "viral"]
    assert cfg.train.loss.name == "cce"
    assert cfg.train.loss.class_weight == "none"
    assert cfg.evaluate.folds == 5


@pytest.mark.parametrize("n, backbone, stages", [
    (150, "mobilenetv2", ["head", 1]),
    (1200, "resnet50", ["head", 2, "all"]),
    (8000, "densenet121", ["head", 2, "all"]),
])
def test_backbone_and_stages_follow_the_data_size(n, backbone, stages, dicom_csv):
    survey = DatasetSurvey(source=dicom_csv, task="binary", classes=["normal", "lesion"],
                           class_counts={"normal": n // 2, "lesion": n - n // 2},
                           patients_per_class={"normal": n // 4, "lesion": n // 4},
                           n_images=n, n_patients=n // 2, path_column="file", label_column="label",
                           patient_column="patient_id")
    text = starter_config(dicom_csv, dicom_csv.parent, survey=survey)
    cfg = config_from_dict(yaml.safe_load(text), base_dir=dicom_csv.parent)
    assert cfg.model.backbone == backbone
    assert [s.unfreeze for s in cfg.train.stages] == stages
    assert cfg.train.loss.class_weight == "none"  # 1:1
    assert f"{n} images" in text


def test_refuses_to_overwrite_without_force(dicom_csv, tmp_path):
    out = tmp_path / "config.yaml"
    out.write_text("keep me\n")
    with pytest.raises(FileExistsError, match="--force"):
        write_starter_config(dicom_csv, out)
    assert out.read_text() == "keep me\n"
    write_starter_config(dicom_csv, out, force=True)
    assert load_config(out).data.patient_column == "patient_id"


def test_no_labels_is_a_clear_error(tmp_path):
    write_png(tmp_path / "loose" / "a.png", np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match="cannot tell the classes"):
        survey_dataset(tmp_path / "loose")


def test_cli_init(dicom_csv, tmp_path, capsys):
    out = tmp_path / "c.yaml"
    assert main(["init", str(dicom_csv), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "Dataset:" in printed
    assert load_config(out).task == "binary"
    assert main(["init", str(dicom_csv), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already exists" in err[0]
    assert main(["init", str(dicom_csv), "--out", str(out), "--force"]) == 0


def test_cli_init_help_has_an_example(capsys):
    with pytest.raises(SystemExit) as ex:
        main(["init", "--help"])
    assert ex.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and "medtl init" in out and "--force" in out


def _odd_columns_csv(root: Path) -> Path:
    """A CSV whose columns medtl cannot guess (NIH-like names)."""
    return _films_csv(root, "entries.csv", 12, 2, lambda p, file: {
        "Image Index": file, "Patient ID": f"P{p}", "Finding": ["none", "mass", "nodule"][p % 3],
        "Effusion": int(p % 2 == 0), "Mass": int(p % 3 == 1)})


def test_column_options_name_what_cannot_be_guessed(tmp_path):
    csv_path = _odd_columns_csv(tmp_path)
    with pytest.raises(ValueError, match="no file column"):
        survey_dataset(csv_path)
    cols = {"path_column": "Image Index", "label_column": "Finding", "patient_column": "Patient ID"}
    cfg = load_config(write_starter_config(csv_path, tmp_path / "mc.yaml", columns=cols))
    assert cfg.task == "multiclass" and cfg.data.classes == ["mass", "nodule", "none"]
    assert (cfg.data.path_column, cfg.data.patient_column) == ("Image Index", "Patient ID")
    assert cfg.train.loss.name == "cce"
    assert len(load_manifest(cfg).df) == 24

    cols["label_column"] = ["Effusion", "Mass"]
    cfg = load_config(write_starter_config(csv_path, tmp_path / "ml.yaml", columns=cols))
    assert cfg.task == "multilabel" and cfg.data.label_column == ["Effusion", "Mass"]
    with pytest.raises(ValueError, match="no column 'Nodule' for data.label_column; columns: Image Index"):
        survey_dataset(csv_path, {**cols, "label_column": ["Effusion", "Nodule"]})


def test_cli_init_column_options(tmp_path, capsys):
    csv_path = _odd_columns_csv(tmp_path)
    out = tmp_path / "c.yaml"
    assert main(["init", str(csv_path), "--out", str(out), "--path-column", "Image Index",
                 "--label-column", "Effusion, Mass", "--patient-column", "none"]) == 0
    cfg = load_config(out)
    assert cfg.data.label_column == ["Effusion", "Mass"] and cfg.data.patient_column in (None, "none")
    assert "WARNING: no patient ids found" in out.read_text()


def test_joined_finding_names_make_a_multilabel_config_with_a_separator(tmp_path):
    findings = ["Effusion|Mass", "No Finding", "Mass", "Effusion", "No Finding", "Effusion|Nodule"]
    csv_path = _films_csv(tmp_path, "Data_Entry.csv", 12, 3, lambda p, file: {
        "Image Index": file, "Finding Labels": findings[p % 6], "Patient ID": f"P{p}"})
    cols = {"path_column": "Image Index", "patient_column": "Patient ID", "label_column": "Finding Labels"}
    guessed = survey_dataset(csv_path, cols)  # without the separator: a hint, not silence
    assert guessed.task == "multiclass" and any("--label-separator '|'" in n for n in guessed.notes)
    out = write_starter_config(csv_path, tmp_path / "nih.yaml", columns={**cols, "label_separator": "|"})
    cfg = load_config(out)
    assert cfg.task == "multilabel" and cfg.data.label_separator == "|"
    assert cfg.data.classes == ["Effusion", "Mass", "Nodule"]  # 'No Finding' is the absence of all
    m = load_manifest(cfg)
    assert m.class_counts().tolist() == [12, 8, 4]
    assert "No Finding 8" in out.read_text()
