"""A fake cross-validation run folder for the report tests, built without TensorFlow.

The fold artefacts a real run leaves (folds.csv, cv.json, config.yaml, per fold: test
predictions, postprocess.json, fold.json, history.csv, metrics.json) are written by hand from
known scores, then pooled by the real :func:`medtl.evaluate.cv.merge_cv`, so the report reads
exactly the formats a real run writes. PHI is planted where a careless report could pick it up:
PNG text chunks of the films and overlays, and the header of one DICOM film.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PHI_NAME = "TESTPHI^ZELDA0042"
PHI_BIRTH = "19410607"
PHI_TEXT = "PLANTEDSECRET77"


@dataclass
class FakeRun:
    run: Path
    files: list[str]
    patients: list[str]
    labels: np.ndarray
    scores: np.ndarray
    folds: np.ndarray
    dicom_file: str
    phi: list[str]


def _png_with_text(path: Path, pixels: np.ndarray, text: dict[str, str]) -> None:
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for i, (k, v) in enumerate(text.items()):
        info.add_text(k, v, zip=bool(i % 2))  # tEXt and zTXt chunks
    info.add_itxt("Comment", text.get("Author", PHI_TEXT), zip=True)
    Image.fromarray(pixels).save(path, pnginfo=info)


def _write_dicom(path: Path, pixels: np.ndarray, patient_id: str, preamble: bool = True) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientName = PHI_NAME
    ds.PatientID = patient_id
    ds.PatientBirthDate = PHI_BIRTH
    ds.InstitutionName = "Planted General Hospital"
    ds.set_pixel_data(pixels.astype(np.uint16) * 16, "MONOCHROME2", 12)
    ds.save_as(path, enforce_file_format=preamble)  # False: no preamble, no 'DICM' (some PACS exports)


def make_fake_cv_run(root: Path, n_patients: int = 24, k: int = 3, seed: int = 0,
                     overlays: bool = True, planted: bool = False) -> FakeRun:
    """Write a merged fake CV run under ``root / 'run'`` and its films under ``root / 'images'``.

    With ``planted``, PHI sits where PACS exports put it: patient ids are 8-digit record numbers,
    each patient's films are in a folder named by that number, film names carry a person's name
    and birth date, and the DICOM film has no preamble.
    """
    from medtl.config import config_from_dict
    from medtl.evaluate.cv import merge_cv
    from medtl.stats.postprocess import PostProcess
    from medtl.io.atomic import write_csv, write_json
    from medtl.run.layout import fold_dir

    rng = np.random.default_rng(seed)
    run, images = root / "run", root / "images"
    run.mkdir(parents=True)
    images.mkdir()
    files, patients, labels = [], [], []
    for p in range(n_patients):
        pid = f"4071{p:04d}" if planted else f"PAT-{p:04d}-X"
        y = int(p % 3 == 0)
        folder = images / pid if planted else images
        folder.mkdir(exist_ok=True)
        for film in range(2):
            stem = f"SMITH_ANNA_19{p:02d}0{film + 1}01" if planted else f"img_{p:03d}_{film}"
            files.append(str(folder / f"{stem}.png"))
            patients.append(pid)
            labels.append(y)
    labels = np.array(labels)
    scores = np.clip(0.25 + 0.5 * labels + rng.normal(0, 0.2, labels.size), 0.01, 0.99)
    pat_fold = {pid: (i // 3) % k for i, pid in enumerate(dict.fromkeys(patients))}  # 1 in 3 positive
    folds = np.array([pat_fold[p] for p in patients])

    # The most confident true positive is a DICOM film with PHI in its header.
    best_tp = int(np.argmax(np.where(labels == 1, scores, -1)))
    for i, f in enumerate(files):
        pixels = (rng.random((48, 40)) * 255).astype(np.uint8)
        if i == best_tp:
            files[i] = f = f[:-4] + ".dcm"
            _write_dicom(Path(f), pixels, patients[i], preamble=not planted)
        else:
            _png_with_text(Path(f), pixels, {"Author": PHI_NAME, "Description": PHI_TEXT})

    cfg = config_from_dict({
        "name": "fake-report", "seed": 5, "task": "binary",
        "data": {"manifest": str(root / "labels.csv"), "classes": ["normal", "lesion"]},
        "model": {"backbone": "smallcnn", "weights": "none"},
        "train": {"stages": [{"unfreeze": "head", "epochs": 3, "lr": 1e-3},
                             {"unfreeze": "all", "epochs": 2, "lr": 1e-4}]},
        "evaluate": {"folds": k, "bootstrap": 100},
        "report": {"cases": 2},
    })
    (run / "config.yaml").write_text(cfg.to_yaml())
    write_json(run / "cv.json", {"format": 1, "kind": "cv", "folds": k, "seed": cfg.seed, "task": "binary",
                                 "classes": ["normal", "lesion"], "n_images": len(files),
                                 "final_model": "ensemble", "created": "2026-01-02T03:04:05"})
    names = np.array(["normal", "lesion"])
    write_csv(run / "folds.csv", pd.DataFrame({"file": files, "patient": patients, "fold": folds,
                                               "label": names[labels]}))
    for f in range(k):
        fd = fold_dir(run, f)
        fd.mkdir()
        test = folds == f
        val = ~test  # stands in for the fold's validation split
        pp = PostProcess.fit("binary", ["normal", "lesion"], labels[val, None], scores[val, None], "youden")
        write_json(fd / "postprocess.json", pp.to_dict())
        write_csv(fd / "test_predictions.csv", pd.DataFrame({
            "file": np.array(files)[test], "patient": np.array(patients)[test], "fold": f,
            "label": labels[test], "score": scores[test], "threshold": pp.thresholds[0],
            "prediction": (scores[test] >= pp.thresholds[0]).astype(int)}))
        hist = pd.DataFrame({
            "stage": [1, 1, 1, 2, 2], "epoch": [1, 2, 3, 1, 2], "global_epoch": [1, 2, 3, 4, 5],
            "loss": [0.9, 0.7, 0.6, 0.5, 0.45], "val_loss": [0.95, 0.8, 0.75, 0.7, 0.72],
            "roc_auc": [0.6, 0.7, 0.75, 0.8, 0.85], "val_roc_auc": [0.55, 0.66, 0.7, 0.78, 0.77],
            "best": [True, True, True, True, False]})
        hist.to_csv(fd / "history.csv", index=False)
        write_json(fd / "metrics.json", {"stages": [{"stage": 1, "epochs_run": 3}, {"stage": 2, "epochs_run": 2}],
                                         "best": {"stage": 2, "epoch": 1, "global_epoch": 4}, "wall_time_s": 1.0})
        write_json(fd / "fold.json", {"fold": f, "finished": True, "n_train": int(val.sum()), "n_val": 0,
                                      "n_test": int(test.sum()), "n_test_patients": int(len(set(np.array(patients)[test]))),
                                      "thresholds": pp.thresholds, "skipped": [], "wall_time_s": 1.0})
    merge_cv(run)

    if overlays:
        from PIL import Image

        od = run / "overlays"
        od.mkdir()
        rows = []
        for i, f in enumerate(files):
            name = f"ov_{i:03d}.png"
            rgb = np.zeros((48, 40, 3), np.uint8)
            rgb[..., 0] = 200
            rgb[10:20, 10:20] = (255, 255, 0)
            _png_with_text(od / name, rgb, {"Author": PHI_NAME, "Description": PHI_TEXT})
            rows.append({"file": f, "png": name, "method": "gradcam++"})
        pd.DataFrame(rows).to_csv(od / "overlays.csv", index=False)
        Image.open(od / "ov_000.png").verify()
    return FakeRun(run, files, patients, labels, scores, folds, files[best_tp],
                   [PHI_NAME, PHI_BIRTH, PHI_TEXT, "ZELDA0042", "Planted General Hospital"])


@pytest.fixture
def fake_cv_run(tmp_path) -> FakeRun:
    """A merged fake CV run (3 folds, 24 patients, 48 films) with planted PHI."""
    return make_fake_cv_run(tmp_path)


def config_text(run: Path) -> dict:
    return yaml.safe_load((run / "config.yaml").read_text())
