"""Reading and writing the files of a run folder: model_info.json, postprocess.json and the
columns of prediction tables.

``model_info.json`` sits beside every model: the task, the class names, every ``data.*``
setting that changes pixels (image size, letterboxing, window, ...) and the decision threshold
on the raw score scale once one has been chosen. Prediction rebuilds the image pipeline from
it, so it cannot preprocess differently from training. ``postprocess.json`` holds the
threshold(s) and calibrator fitted on a model's validation split, which ``medtl predict``
applies.

No TensorFlow here.

Example:
    >>> from medtl.run.files import read_model_info, score_columns
    >>> info = read_model_info("runs/demo/20250101-120000")
    >>> score_columns(info["task"], info["classes"])
    ['score']
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from medtl.config import Config, DataConfig
from medtl.io.atomic import read_json, write_atomic, write_json
from medtl.run.layout import ENSEMBLE_FILE, FEATURE_SUMMARY_FILE, MODEL_INFO_FILE, POSTPROCESS_FILE, VAL_PREDICTIONS
from medtl.stats.postprocess import PostProcess
from medtl.stats.shift import FeatureSummary

__all__ = [
    "write_model_info", "read_model_info", "set_threshold", "pipeline_config", "model_info_path",
    "label_columns", "score_columns", "threshold_columns", "targets_from_frame", "scores_from_frame",
    "decision_suffix", "read_postprocess", "write_postprocess", "save_postprocess", "ensemble_thresholds",
    "deployed_ensemble_thresholds",
    "write_feature_summary", "read_feature_summary",
]

INFO_FORMAT = 1
# data.* keys that say where data is or how it is split, not what the pixels look like.
_NOT_PIXELS = frozenset({
    "manifest", "root", "path_column", "label_column", "label_separator", "patient_column", "classes",
    "cache_dir", "on_error", "val_fraction", "workers", "annotations",
})


# --------------------------------------------------------------------------------------------
# Prediction table columns


def label_columns(task: str, classes: Sequence[str]) -> list[str]:
    """``label`` (class index) for binary/multiclass; ``label_<name>`` per label for multilabel."""
    return [f"label_{c}" for c in classes] if task == "multilabel" else ["label"]


def score_columns(task: str, classes: Sequence[str], suffix: str = "") -> list[str]:
    """``score`` (binary: P(classes[1])) or ``score_<class>``, with ``suffix`` (e.g. ``_calibrated``)."""
    if task == "binary":
        return [f"score{suffix}"]
    return [f"score{suffix}_{c}" for c in classes]


def threshold_columns(task: str, classes: Sequence[str]) -> list[str]:
    """``threshold`` (binary), ``threshold_<label>`` (multilabel), none for multiclass."""
    if task == "binary":
        return ["threshold"]
    if task == "multilabel":
        return [f"threshold_{c}" for c in classes]
    return []


def _need(df: pd.DataFrame, cols: Sequence[str], where: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"{where}: missing column(s) {', '.join(missing)} (has {', '.join(map(str, df.columns))}); "
                         "was it written by another medtl version or task?")


def targets_from_frame(df: pd.DataFrame, task: str, classes: Sequence[str], where: str = "table") -> np.ndarray:
    """float (N, K) targets from a prediction table's label column(s)."""
    cols = label_columns(task, classes)
    _need(df, cols, where)
    if task == "multilabel":
        return df[cols].to_numpy(dtype=np.float64)
    y = df["label"].to_numpy(dtype=np.int64)
    if task == "binary":
        return y.astype(np.float64)[:, None]
    return np.eye(len(classes))[y]


def scores_from_frame(df: pd.DataFrame, task: str, classes: Sequence[str], suffix: str = "",
                      where: str = "table") -> np.ndarray:
    """float (N, K) scores from a prediction table."""
    cols = score_columns(task, classes, suffix)
    _need(df, cols, where)
    return df[cols].to_numpy(dtype=np.float64)


def decision_suffix(df: pd.DataFrame, task: str, classes: Sequence[str]) -> str:
    """``_calibrated`` when the table has calibrated scores (they are what decisions use), else ''."""
    return "_calibrated" if all(c in df.columns for c in score_columns(task, classes, "_calibrated")) else ""


# --------------------------------------------------------------------------------------------
# model_info.json


def write_model_info(run_dir: str | Path, cfg: Config, manifest, policy: str = "float32") -> Path:
    """Write ``model_info.json`` for a model trained with ``cfg`` on ``manifest``'s classes.

    An existing threshold in the file is kept (the trainer rewrites the file on resume).
    """
    path = Path(run_dir) / MODEL_INFO_FILE
    old = read_json(path) if path.exists() else {}
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
    write_json(path, info)
    return path


def model_info_path(run_or_model: str | Path) -> Path:
    """``model_info.json`` of a run folder or of the folder holding a ``.keras`` file.

    Raises:
        FileNotFoundError: there is none (the message says what predict needs).
    """
    p = Path(run_or_model)
    folder = p if p.is_dir() else p.parent
    info = folder / MODEL_INFO_FILE
    if not info.exists():
        raise FileNotFoundError(f"{folder}: no {MODEL_INFO_FILE}; predict needs the training-time "
                                "preprocessing saved by medtl train beside the model")
    return info


def read_model_info(run_or_model: str | Path) -> dict:
    """The ``model_info.json`` of a run folder or of the folder holding a ``.keras`` file."""
    return read_json(model_info_path(run_or_model))


def set_threshold(run_or_model: str | Path, threshold: float | Sequence[float],
                  rule: str | None = None) -> None:
    """Save the decision threshold (raw score scale) in ``model_info.json``.

    Args:
        run_or_model: the run folder or model file.
        threshold: one value (binary), or one per label (multilabel).
        rule: how it was chosen, e.g. ``youden`` (kept for the record).
    """
    path = model_info_path(run_or_model)
    info = read_json(path)
    info["threshold"] = float(threshold) if np.ndim(threshold) == 0 else [float(t) for t in threshold]
    info["threshold_rule"] = rule
    write_json(path, info)


def pipeline_config(info: dict) -> Config:
    """A Config whose ``data`` settings reproduce the training-time preprocessing in ``info``.

    Raises:
        ValueError: ``info`` has preprocessing keys this medtl version does not know.
    """
    known = {f.name for f in dataclasses.fields(DataConfig)}
    unknown = sorted(set(info["preprocessing"]) - known)
    if unknown:
        raise ValueError(f"{MODEL_INFO_FILE}: preprocessing keys {', '.join(unknown)} are unknown to "
                         "this medtl version; upgrade medtl to the version that trained the model")
    # The values come from a config that was validated when the model was trained.
    data = DataConfig(**{**info["preprocessing"], "manifest": "(predict)"})
    return Config(task=info["task"], data=data)


# --------------------------------------------------------------------------------------------
# postprocess.json


def read_postprocess(folder: str | Path) -> PostProcess:
    """The :class:`~medtl.stats.postprocess.PostProcess` saved in ``folder/postprocess.json``."""
    return PostProcess.from_dict(read_json(Path(folder) / POSTPROCESS_FILE))


def write_postprocess(folder: str | Path, pp: PostProcess) -> Path:
    """Save ``pp`` as ``folder/postprocess.json``."""
    return write_json(Path(folder) / POSTPROCESS_FILE, pp.to_dict())


def save_postprocess(cfg: Any, classes: Sequence[str], val_df: pd.DataFrame, out_dir: str | Path,
                     where: str | None = None, tta: str = "none") -> PostProcess:
    """Fit the decision threshold and calibrator on validation predictions and save them.

    ``evaluate.threshold`` and ``evaluate.calibration`` are fitted on ``val_df`` (the scores a
    model gave its own validation split, e.g. val_predictions.csv) and written to
    ``out_dir/postprocess.json``, which ``medtl predict`` applies; the model's
    model_info.json gets the raw-score threshold, for callers of the bare model file.
    ``tta`` is the ``predict.tta`` mode ``val_df``'s scores were averaged over; it is saved
    (``PostProcess.tta``) so that prediction can say when it scores films otherwise.

    Raises:
        ValueError: the validation predictions cannot support the rule (e.g. one class only).
    """
    out = Path(out_dir)
    where = where or str(out / VAL_PREDICTIONS)
    y = targets_from_frame(val_df, cfg.task, classes, where=where)
    s = scores_from_frame(val_df, cfg.task, classes, where=where)
    # The threshold's own interval resamples patients: films of one patient move together.
    groups = val_df["patient_id"].to_numpy(dtype=object) if "patient_id" in val_df.columns else None
    pp = PostProcess.fit(cfg.task, list(classes), y, s, cfg.evaluate.threshold, cfg.evaluate.calibration,
                         groups=groups, n_boot=cfg.evaluate.bootstrap, seed=cfg.seed)
    pp.tta = str(tta)
    write_postprocess(out, pp)
    if pp.raw_thresholds is not None and (out / MODEL_INFO_FILE).exists():
        # The model alone sees raw scores, so it gets the raw-scale threshold.
        t = pp.raw_thresholds[0] if cfg.task == "binary" else pp.raw_thresholds
        set_threshold(out, t, rule=f"{cfg.evaluate.threshold} on the validation split (uncalibrated scores)")
    return pp


def ensemble_thresholds(pps: Sequence[PostProcess]) -> list[float] | None:
    """The ensemble's threshold per column: the median of the folds' validation thresholds.

    Each fold threshold was chosen on clean validation data for its own model; no clean data
    are left for the ensemble itself (every image trained some fold model), and re-choosing on
    the pooled validation predictions would tune on predictions of other models than the
    ensemble. The median is robust to one odd fold.
    """
    if pps[0].thresholds is None:
        return None
    t = np.array([pp.thresholds for pp in pps], dtype=np.float64)
    return [float(v) for v in np.median(t, axis=0)]


def deployed_ensemble_thresholds(run: str | Path, folds: Sequence[int],
                                 pps: Sequence[PostProcess]) -> tuple[list[float] | None, str]:
    """(thresholds, where they come from) of a CV run's fold ensemble as deployed.

    ``ensemble.json`` decides when it was written for exactly these folds with
    ``evaluate.ensemble_threshold: pooled``; otherwise the median of the folds' thresholds
    (:func:`ensemble_thresholds`), which is also what ``median`` writes there.
    """
    path = Path(run) / ENSEMBLE_FILE
    saved = read_json(path) if path.is_file() else {}
    if (saved.get("threshold_source") == "pooled" and saved.get("thresholds") is not None
            and saved.get("members") == [f"fold_{f}" for f in folds]):
        return [float(v) for v in saved["thresholds"]], str(saved["threshold_rule"])
    thresholds = ensemble_thresholds(pps)
    if thresholds is None:
        return None, "arg-max (multiclass)"
    text = f"median of the validation-chosen ({pps[0].rule}) thresholds of folds {', '.join(map(str, folds))}"
    if saved.get("threshold_source") == "pooled":
        text += " (ensemble.json's pooled threshold is for other folds: run medtl cv --merge to update it)"
    return thresholds, text


# --------------------------------------------------------------------------------------------
# feature_summary.npz


def write_feature_summary(folder: str | Path, summary: FeatureSummary) -> Path:
    """Save ``summary`` as ``folder/feature_summary.npz`` (numbers only: no paths, no ids).

    Example:
        >>> write_feature_summary(run_dir, build_summary(features, groups, seed=7))
    """
    def save(tmp: str) -> None:
        with open(tmp, "wb") as fh:  # a file object: np.savez would append .npz to a name
            np.savez(fh, **summary.to_arrays())

    return write_atomic(Path(folder) / FEATURE_SUMMARY_FILE, save)


def read_feature_summary(run_or_model: str | Path) -> FeatureSummary | None:
    """The feature summary beside a model (run folder or ``.keras`` file); None when the run has
    none (trained before medtl kept one, or its model has no pooled features).

    Example:
        >>> s = read_feature_summary("runs/demo/20250101-120000")
    """
    p = Path(run_or_model)
    path = (p if p.is_dir() else p.parent) / FEATURE_SUMMARY_FILE
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as a:
        return FeatureSummary.from_arrays(a)
