"""Tiny datasets and fake fold training for the cross-validation tests (no TensorFlow).

The fake "model" scores each file from a hash of its path and its label, so every file has its
own score (a score identifies its file) and the scores are informative but imperfect.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from medtl.config import Config, config_from_dict


def make_png_set(root: Path, n_patients: int = 24, task: str = "binary", seed: int = 0) -> Path:
    """``root/labels.csv`` and 8x8 random PNGs; 1-3 films per patient; returns the CSV path."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        for f in range(1 + p % 3):
            name = f"img/P{p:03d}_{f}.png"
            (root / "img").mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(root / name)
            row = {"file": name, "patient_id": f"P{p:03d}"}
            if task == "binary":
                row["label"] = int(p % 3 == 0)
            elif task == "multiclass":
                row["label"] = ("a", "b", "c")[p % 3]
            else:
                row["a"], row["b"] = int(p % 2 == 0), int(p % 3 == 0)
            rows.append(row)
    out = root / "labels.csv"
    with out.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out


def make_cfg(csv_path: Path, work: Path, task: str = "binary", folds: int = 3, **evaluate) -> Config:
    """A validated config for the PNG set; ``evaluate`` keys override."""
    data = {"manifest": str(csv_path), "patient_column": "patient_id", "cache_dir": str(work / "cache"),
            "val_fraction": 0.3, "image_size": [32, 32]}
    raw = {"name": "cvtest", "seed": 3, "task": task, "output_dir": str(work / "runs"), "data": data,
           "model": {"backbone": "mobilenetv2", "weights": "none"},
           # youden: these tests check thresholds chosen on validation (the default, fixed:0.5, is not)
           "evaluate": {"folds": folds, "bootstrap": 50, "threshold": "youden", **evaluate}}
    if task == "multiclass":
        data["classes"] = ["a", "b", "c"]
        raw["train"] = {"loss": {"name": "cce"}}
    if task == "multilabel":
        data["label_column"] = ["a", "b"]
    return config_from_dict(raw)


def _unit(path: str, salt: str = "") -> float:
    return int(hashlib.md5((salt + path).encode()).hexdigest()[:12], 16) / 16**12


def fake_scores(df: pd.DataFrame, task: str, classes, quality: float = 1.0, salt: str = "") -> np.ndarray:
    """Scores (N, K) a model might give: informative, imperfect, unique per file."""
    paths = df["path"].tolist()
    if task == "binary":
        y = df["label"].to_numpy(dtype=float)
        s = [0.5 + quality * 0.3 * (lab - 0.5) + 0.6 * (_unit(p, salt) - 0.5) for p, lab in zip(paths, y)]
        return np.clip(np.asarray(s)[:, None], 0.001, 0.999)
    k = len(classes)
    if task == "multiclass":
        y = np.eye(k)[df["label"].to_numpy(dtype=int)]
        z = quality * 1.5 * y + np.array([[2 * _unit(p, salt + str(j)) for j in range(k)] for p in paths])
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    y = df[list(classes)].to_numpy(dtype=float)
    s = 0.5 + quality * 0.3 * (y - 0.5) + 0.6 * (np.array([[_unit(p, salt + str(j)) for j in range(k)]
                                                           for p in paths]) - 0.5)
    return np.clip(s, 0.001, 0.999)


def _val_frame(m, scores: np.ndarray) -> pd.DataFrame:
    df = m.df
    out = pd.DataFrame({"path": df["path"].astype(str), "patient_id": df["patient_id"].astype(str)})
    if m.task == "multilabel":
        for c, col in zip(m.classes, m.label_columns):
            out[f"label_{c}"] = df[col].to_numpy()
    else:
        out["label"] = df["label"].to_numpy()
    cols = ["score"] if m.task == "binary" else [f"score_{c}" for c in m.classes]
    for j, c in enumerate(cols):
        out[c] = scores[:, j]
    return out


class FakeTrainer:
    """Stands in for ``medtl.evaluate.folds._train_fold``: records its calls, writes model_info.json
    (as the real trainer does) and returns validation predictions of the fake model."""

    def __init__(self, quality: float = 1.0, fail_on: tuple[str, ...] = (), salt: str = "") -> None:
        self.calls: list[dict] = []
        self.quality, self.fail_on, self.salt = quality, fail_on, salt

    def __call__(self, cfg, manifest, train_idx, val_idx, fdir: Path, progress: bool):
        from medtl.run.files import write_model_info

        self.calls.append({"fold": fdir.name, "train": np.asarray(train_idx).copy(),
                           "val": np.asarray(val_idx).copy()})
        if fdir.name in self.fail_on:
            raise KeyboardInterrupt(f"simulated kill in {fdir.name}")
        write_model_info(fdir, cfg, manifest)
        m = manifest.subset(val_idx)
        cols = m.label_columns if m.task == "multilabel" else m.classes
        return _val_frame(m, fake_scores(_label_view(m), m.task, cols, self.quality, self.salt)), None


class FakePredict:
    """Stands in for ``medtl.evaluate.folds._predict_fold``: the fake model on the test fold."""

    def __init__(self, quality: float = 1.0, salt: str = "") -> None:
        self.calls: list[str] = []
        self.quality, self.salt = quality, salt

    def __call__(self, cfg, fdir: Path, model, test_m):
        self.calls.append(fdir.name)
        cols = test_m.label_columns if test_m.task == "multilabel" else test_m.classes
        return test_m, fake_scores(_label_view(test_m), test_m.task, cols, self.quality, self.salt), []


def _label_view(m) -> pd.DataFrame:
    return m.df


def install_fakes(monkeypatch, trainer: FakeTrainer | None = None, predict: FakePredict | None = None):
    """Patch the fold runner's training and test-prediction steps; returns (trainer, predict)."""
    from medtl.evaluate import folds

    trainer = trainer or FakeTrainer()
    predict = predict or FakePredict()
    monkeypatch.setattr(folds, "_train_fold", trainer)
    monkeypatch.setattr(folds, "_predict_fold", predict)
    return trainer, predict
