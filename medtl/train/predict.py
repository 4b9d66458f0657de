"""Run a trained model on new files with exactly the training-time preprocessing.

A run folder (or a folder holding a ``.keras`` file) has ``model_info.json`` beside the model:
the task, the class names, every ``data.*`` setting that changes pixels (image size,
letterboxing, window, ...) and the decision threshold once one has been chosen. Prediction
rebuilds the image pipeline from that file, so it cannot preprocess differently from training.

Example:
    >>> from medtl.train.predict import collect_paths, predict_paths
    >>> df = predict_paths("runs/demo/20250101-120000", collect_paths(["new_films/"]))
    >>> df[["path", "score", "prediction", "error"]].head()
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from medtl.config import Config, DataConfig
from medtl.io.image import is_image_file

__all__ = [
    "predict_paths", "collect_paths", "Predictor", "read_model_info", "write_model_info",
    "set_threshold", "score_columns", "MODEL_FILE", "MODEL_INFO_FILE",
]

MODEL_FILE = "model.keras"
MODEL_INFO_FILE = "model_info.json"
INFO_FORMAT = 1
# data.* keys that say where data is or how it is split, not what the pixels look like.
_NOT_PIXELS = frozenset({
    "manifest", "root", "path_column", "label_column", "label_separator", "patient_column", "classes",
    "cache_dir", "on_error", "val_fraction", "workers",
})


# --------------------------------------------------------------------------------------------
# model_info.json


def score_columns(task: str, classes: Sequence[str]) -> list[str]:
    """Score column names: ``score`` for binary (P(classes[1])), else ``score_<class>``."""
    return ["score"] if task == "binary" else [f"score_{c}" for c in classes]


def write_model_info(run_dir: str | Path, cfg: Config, manifest, policy: str = "float32") -> Path:
    """Write ``model_info.json`` for a model trained with ``cfg`` on ``manifest``'s classes.

    An existing threshold in the file is kept (the trainer rewrites the file on resume).
    """
    path = Path(run_dir) / MODEL_INFO_FILE
    old = json.loads(path.read_text()) if path.exists() else {}
    data = dataclasses.asdict(cfg.data)
    info = {
        "format": INFO_FORMAT,
        "task": cfg.task,
        "classes": list(manifest.classes),
        "n_outputs": int(manifest.n_outputs),
        "score_columns": score_columns(cfg.task, manifest.classes),
        "preprocessing": {k: v for k, v in data.items() if k not in _NOT_PIXELS},
        "backbone": cfg.model.backbone,
        "weights": cfg.model.weights,
        "seed": cfg.seed,
        "dtype_policy": policy,
        "threshold": old.get("threshold"),
        "threshold_rule": old.get("threshold_rule"),
    }
    _write_json(path, info)
    return path


def read_model_info(run_or_model: str | Path) -> dict:
    """The ``model_info.json`` of a run folder or of the folder holding a ``.keras`` file."""
    return json.loads(_info_path(Path(run_or_model)).read_text())


def set_threshold(run_or_model: str | Path, threshold: float | Sequence[float],
                  rule: str | None = None) -> None:
    """Save the decision threshold (chosen on validation data) that ``predict`` applies.

    Args:
        run_or_model: the run folder or model file.
        threshold: one value (binary), or one per label (multilabel).
        rule: how it was chosen, e.g. ``youden`` (kept for the record).
    """
    path = _info_path(Path(run_or_model))
    info = json.loads(path.read_text())
    info["threshold"] = float(threshold) if np.ndim(threshold) == 0 else [float(t) for t in threshold]
    info["threshold_rule"] = rule
    _write_json(path, info)


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def _model_path(p: Path) -> Path:
    if p.is_dir():
        model = p / MODEL_FILE
        if not model.exists():
            raise FileNotFoundError(f"{p}: no {MODEL_FILE} in this folder; pass a training run "
                                    "folder or a .keras model file")
        return model
    if not p.exists():
        raise FileNotFoundError(f"{p}: not found; pass a training run folder or a .keras model file")
    if p.suffix != ".keras":
        raise ValueError(f"{p}: not a .keras model file; pass a training run folder or a .keras file")
    return p


def _info_path(p: Path) -> Path:
    folder = p if p.is_dir() else p.parent
    info = folder / MODEL_INFO_FILE
    if not info.exists():
        raise FileNotFoundError(f"{folder}: no {MODEL_INFO_FILE}; predict needs the training-time "
                                "preprocessing saved by medtl train beside the model")
    return info


def pipeline_config(info: dict) -> Config:
    """A Config whose ``data`` settings reproduce the training-time preprocessing in ``info``."""
    known = {f.name for f in dataclasses.fields(DataConfig)}
    unknown = sorted(set(info["preprocessing"]) - known)
    if unknown:
        raise ValueError(f"{MODEL_INFO_FILE}: preprocessing keys {', '.join(unknown)} are unknown to "
                         "this medtl version; upgrade medtl to the version that trained the model")
    # The values come from a config that was validated when the model was trained.
    data = DataConfig(**{**info["preprocessing"], "manifest": "(predict)"})
    return Config(task=info["task"], data=data)


# --------------------------------------------------------------------------------------------
# Files


def collect_paths(files_or_folders: Iterable[str | Path]) -> list[str]:
    """Expand files and folders into the image files to predict on.

    Folders are searched recursively for DICOM, PNG, JPEG, TIFF and BMP files (by suffix, or
    by the DICOM magic bytes whatever the name, as for PACS exports named by UID); hidden
    files are ignored. Files given by name are kept whatever their suffix, so that an unreadable
    one shows up as an error row instead of vanishing.

    Raises:
        FileNotFoundError: a given path does not exist.

    Example:
        >>> collect_paths(["scans/", "extra.dcm"])
        ['scans/a/1.dcm', 'scans/b.png', 'extra.dcm']
    """
    out: list[str] = []
    for item in files_or_folders:
        p = Path(item)
        if p.is_dir():
            found = [f for f in p.rglob("*") if f.is_file() and is_image_file(f)
                     and not any(part.startswith(".") for part in f.relative_to(p).parts)]
            out += sorted(str(f) for f in found)
        elif p.exists():
            out.append(str(p))
        else:
            raise FileNotFoundError(f"{p}: no such file or folder; check the path")
    return list(dict.fromkeys(out))


# --------------------------------------------------------------------------------------------
# Prediction


class Predictor:
    """A loaded model with its preprocessing; reuse it to predict on many batches of files.

    Example:
        >>> pred = Predictor("runs/demo/20250101-120000")
        >>> pred.predict(["a.dcm", "b.png"]).score.tolist()
    """

    def __init__(self, run_or_model: str | Path) -> None:
        from medtl.data.pipeline import ImagePipeline
        from medtl.models.classifier import load_model

        p = Path(run_or_model)
        self.model_path = _model_path(p)
        self.info = read_model_info(p)
        self.model = load_model(self.model_path, compile=False)
        self.pipeline = ImagePipeline(pipeline_config(self.info))
        self.columns = self.info.get("score_columns") or score_columns(
            self.info["task"], self.info["classes"])

    def predict(self, paths: Sequence[str | Path], batch_size: int = 16) -> pd.DataFrame:
        """Scores for ``paths``, one row each, in order; unreadable files get an ``error``."""
        self.batch_size = int(batch_size)
        rows: list[dict] = []
        batch: list[tuple[int, np.ndarray]] = []
        for i, path in enumerate(paths):
            rows.append({"path": str(path), "prediction": "", "error": ""})
            try:
                x, _geometry = self.pipeline.load(str(path))
            except Exception as exc:  # noqa: BLE001 - every failure becomes a listed error row
                rows[-1]["error"] = _one_line(exc)
                continue
            batch.append((i, np.asarray(x, dtype=np.float32)))
            if len(batch) == batch_size:
                self._score(batch, rows)
                batch = []
        if batch:
            self._score(batch, rows)
        return pd.DataFrame(rows, columns=["path", *self.columns, "prediction", "error"])

    def _score(self, batch: list[tuple[int, np.ndarray]], rows: list[dict]) -> None:
        x = np.stack([b[1] for b in batch])
        if len(x) < self.batch_size:
            # Pad the last batch: one input shape means one traced predict function.
            x = np.concatenate([x, np.zeros((self.batch_size - len(x), *x.shape[1:]), x.dtype)])
        scores = np.asarray(self.model.predict_on_batch(x), dtype=np.float64)[: len(batch)]
        for (i, _), s in zip(batch, scores):
            rows[i].update(zip(self.columns, s.tolist()))
            rows[i]["prediction"] = self._label(s)

    def _label(self, s: np.ndarray) -> str:
        task, classes = self.info["task"], self.info["classes"]
        if task == "multiclass":
            return classes[int(np.argmax(s))]
        t = self.info.get("threshold")
        t = 0.5 if t is None else t
        if task == "binary":
            return classes[1] if s[0] >= float(np.ravel([t])[0]) else classes[0]
        ts = np.broadcast_to(np.asarray(t, dtype=np.float64), s.shape)
        return ";".join(c for c, v, th in zip(classes, s, ts) if v >= th)


def predict_paths(run_or_model: str | Path, paths: Sequence[str | Path],
                  batch_size: int = 16) -> pd.DataFrame:
    """Predict on image files with a trained run or model.

    Args:
        run_or_model: a training run folder (holding model.keras and model_info.json) or a
            ``.keras`` file with model_info.json beside it.
        paths: DICOM/PNG/JPEG files (see :func:`collect_paths` to expand folders).
        batch_size: images per forward pass.

    Returns:
        One row per path, in order: ``path``, ``score`` (binary: probability of the positive
        class) or ``score_<class>`` columns, ``prediction`` (class name at the saved threshold,
        0.5 when none was saved; multilabel: names joined with ';') and ``error`` (empty, or
        why the file could not be read; such rows have no scores).

    Example:
        >>> predict_paths("runs/demo/20250101-120000", ["a.dcm"]).loc[0, "score"]
        0.93
    """
    return Predictor(run_or_model).predict(paths, batch_size=batch_size)


def _one_line(exc: Exception) -> str:
    msg = str(exc).strip().replace("\n", " ")
    return msg if msg else type(exc).__name__
