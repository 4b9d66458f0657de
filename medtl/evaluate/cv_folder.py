"""The folder of a cross-validation run: its name, its frozen config, the fold assignment and
the split files, each checked by the leakage guard.

A run folder is named by a digest of the config (:func:`run_folder`), so the same config always
finds the same folder and parallel fold jobs meet in it. The first job writes the config,
``folds.csv`` (the test fold of every image, from ``patient_kfold`` and the seed) and, per fold,
``split.csv`` (train / val / test); later jobs reuse them and refuse a folder whose config or
manifest has changed. Every split is checked for shared patients and identical files before
anything is trained. See :mod:`medtl.run.layout` for the file names.

Example:
    >>> from medtl.evaluate.cv_folder import run_folder
    >>> run_folder(load_config("configs/demo.yaml")).name
    'cv-1a2b3c4d5e'
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from medtl.config import Config, ConfigError, load_resolved
from medtl.data.manifest import DataError
from medtl.data.splits import LeakageError, assert_no_leakage, patient_holdout, patient_kfold
from medtl.io.atomic import create_once
from medtl.run.layout import CONFIG_FILE, CV_FILE, FOLDS_FILE, SPLIT_FILE, fold_dir
from medtl.run.resume import check_same_config, cv_key_is_free, flatten

__all__ = ["run_folder", "config_digest", "has_patient_ids", "check_supported", "open_run", "fold_assignment",
           "fold_split"]

# Keys added after runs existed: left out of the digest at their default, so a config written
# before them still finds its run folder (and an interrupted run resumes).
_ADDED_KEYS = {"data.label_separator": None, "data.frame": None, "data.max_pixels": 50_000_000,
               "evaluate.linear_probe": False, "predict.tta": "none", "evaluate.ensemble_threshold": "median",
               "augment.mixup": 0.0, "augment.cutmix": 0.0, "train.swa_epochs": 0,
               "train.block_lr_decay": 1.0}


def config_digest(cfg: Config) -> str:
    """10 hex digits identifying what a CV run computes (machine-specific keys left out)."""
    flat = {k: v for k, v in flatten(cfg.to_dict()).items()
            if not cv_key_is_free(k) and not (k in _ADDED_KEYS and v == _ADDED_KEYS[k])}
    return hashlib.sha1(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:10]


def run_folder(cfg: Config) -> Path:
    """The default CV run folder: ``<output_dir>/<name>/cv-<digest of the config>``.

    The same config always names the same folder, so re-running ``medtl cv CONFIG`` continues
    an interrupted run and parallel fold jobs meet in one folder.
    """
    return Path(cfg.output_dir) / cfg.name / f"cv-{config_digest(cfg)}"


def has_patient_ids(cfg: Config) -> bool:
    """False when ``data.patient_column`` is none (every image counted as its own patient)."""
    pc = cfg.data.patient_column
    return bool(pc) and str(pc).lower() != "none"


def check_supported(cfg: Config) -> None:
    """Refuse a config the CV runner cannot honour, before any folder is made."""
    if cfg.task == "multiclass" and cfg.evaluate.calibration == "platt":
        raise ConfigError("evaluate.calibration: platt is binary-only; use temperature (or none) for multiclass")


def open_run(cfg: Config, run_dir: str | Path | None) -> tuple[Path, Config]:
    """Create or reopen the run folder; returns it and the run's own config."""
    run = Path(run_dir) if run_dir is not None else run_folder(cfg)
    run.mkdir(parents=True, exist_ok=True)
    saved_path = run / CONFIG_FILE
    create_once(saved_path, cfg.to_yaml())
    try:
        saved = load_resolved(saved_path)
    except ConfigError as exc:
        raise ConfigError(f"{saved_path}: {exc}") from None
    check_same_config(saved_path, saved, cfg, cv_key_is_free, "the config differs from the one this run started with:",
                      "{key} ({old!r} in the run, {new!r} now)", "use the same config, or another run folder")
    # Where data and caches live may differ between machines of one cluster.
    saved.output_dir, saved.data.cache_dir, saved.data.workers = cfg.output_dir, cfg.data.cache_dir, cfg.data.workers
    saved.train.log_to, saved.train.mlflow_uri = cfg.train.log_to, cfg.train.mlflow_uri  # tracking is per call
    return run, saved


def _class_text(manifest) -> list[str]:
    if manifest.task == "multilabel":
        t = manifest.targets()
        return [";".join(c for c, v in zip(manifest.classes, row) if v) for row in t]
    return [manifest.classes[int(i)] for i in manifest.df["label"]]


def fold_assignment(run: Path, cfg: Config, manifest) -> np.ndarray:
    """The fold of each manifest row, from folds.csv (written on first use)."""
    path = run / FOLDS_FILE
    k = cfg.evaluate.folds
    if not path.exists():
        fold_of = np.full(len(manifest), -1, dtype=np.int64)
        for f, (_, test_idx) in enumerate(patient_kfold(manifest, k, cfg.seed)):
            fold_of[test_idx] = f
        df = pd.DataFrame({"file": manifest.paths, "patient": manifest.df["patient_id"].astype(str),
                           "fold": fold_of, "label": _class_text(manifest)})
        create_once(path, df.to_csv(index=False))
    # cv.json comes after folds.csv: a folder with cv.json always has its fold assignment.
    create_once(run / CV_FILE, json.dumps({
        "format": 1, "kind": "cv", "folds": k, "seed": cfg.seed, "task": cfg.task,
        "classes": list(manifest.classes), "n_images": len(manifest),
        "final_model": cfg.evaluate.final_model, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }, indent=2) + "\n")
    df = pd.read_csv(path, dtype={"file": str, "patient": str})
    if not {"file", "fold"} <= set(df.columns):
        raise DataError(f"{path}: needs columns file and fold (has {', '.join(df.columns)}); "
                        "it is damaged, start a new run")
    folds = pd.to_numeric(df["fold"], errors="coerce")
    bad = [(i + 2, v) for i, (v, n) in enumerate(zip(df["fold"], folds)) if not (n == n and n in range(k))]
    if bad:
        raise DataError(f"{path} line {bad[0][0]}: fold {bad[0][1]!r} is not one of 0 .. {k - 1} "
                        f"({len(bad)} bad row(s)); restore the file or start a new run")
    dup = df["file"][df["file"].duplicated()].tolist()
    if dup:
        raise DataError(f"{path}: file(s) listed twice: {', '.join(dup[:10])}; restore the file or start a new run")
    here, there = set(manifest.paths), set(df["file"])
    if here != there:
        new, gone = sorted(here - there), sorted(there - here)
        parts = ([f"{len(new)} file(s) not in folds.csv: {', '.join(new[:5])}"] if new else []) + \
                ([f"{len(gone)} file(s) of folds.csv not in the manifest: {', '.join(gone[:5])}"] if gone else [])
        raise DataError(f"{path}: the manifest changed since this run started ({'; '.join(parts)}); "
                        "start a new run folder for the new data")
    fold_of = dict(zip(df["file"], folds.astype(np.int64)))
    empty = sorted(set(range(k)) - set(fold_of.values()))
    if empty:
        raise DataError(f"{path}: fold(s) {', '.join(map(str, empty))} have no images; "
                        "restore the file or start a new run")
    return np.array([fold_of[p] for p in manifest.paths], dtype=np.int64)


def fold_split(run: Path, cfg: Config, manifest, assign: np.ndarray,
               f: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train_idx, val_idx, test_idx) of fold ``f`` from its split.csv (written on first use),
    after the leakage guard."""
    test_idx = np.flatnonzero(assign == f)
    rest_idx = np.flatnonzero(assign != f)
    _guard(manifest, rest_idx, test_idx, f"{run}, fold {f} (train+val vs test)")
    fdir = fold_dir(run, f)
    fdir.mkdir(parents=True, exist_ok=True)
    path = fdir / SPLIT_FILE
    paths = np.asarray(manifest.paths, dtype=object)
    if not path.exists():
        try:
            tr, va = patient_holdout(manifest.subset(rest_idx), cfg.data.val_fraction, cfg.seed)
        except DataError as exc:  # the data minus the test fold: say so, it is not the whole set
            # Splits are made once, when a run starts, so nothing has been trained here yet; but
            # the run folder has frozen the config, which the fix changes.
            raise DataError(f"fold {f}, training part: {exc} (nothing was trained: delete {run} or give "
                            "another --run before running the changed config)") from None
        role = np.full(len(manifest), "test", dtype=object)
        role[rest_idx[tr]] = "train"
        role[rest_idx[va]] = "val"
        create_once(path, pd.DataFrame({"file": paths, "patient": manifest.df["patient_id"].astype(str),
                                        "role": role}).to_csv(index=False))
    split = pd.read_csv(path, dtype={"file": str, "patient": str, "role": str})
    roles = dict(zip(split["file"], split["role"]))
    if set(roles) != set(manifest.paths) or len(roles) != len(split) or \
            set(roles.values()) - {"train", "val", "test"}:
        raise DataError(f"{path}: does not list every manifest file once with role train/val/test; "
                        "delete it to make it again (only before the fold has started training)")
    role = np.array([roles[p] for p in manifest.paths], dtype=object)
    if not np.array_equal(np.flatnonzero(role == "test"), test_idx):
        raise DataError(f"{path}: its test files differ from fold {f} of {run / FOLDS_FILE}; one of them "
                        "was edited. Restore it, or start a new run folder")
    train_idx, val_idx = np.flatnonzero(role == "train"), np.flatnonzero(role == "val")
    _guard(manifest, train_idx, val_idx, f"{run}, fold {f} (train vs val)")
    return train_idx, val_idx, test_idx


def _guard(manifest, a: np.ndarray, b: np.ndarray, where: str) -> None:
    """The leakage guard: no patient and no identical file in both ``a`` and ``b``."""
    try:
        assert_no_leakage(manifest.subset(a), manifest.subset(b))
    except LeakageError as exc:
        raise LeakageError(f"{where}: {exc}") from None
