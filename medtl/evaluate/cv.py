"""Patient-grouped, stratified k-fold cross-validation that a reviewer can trust.

For each fold k (numbered 0 .. folds-1, like a SLURM array index):

1. test = the images of fold k (``folds.csv``, made once from ``patient_kfold`` and the seed);
   the rest is split again, patient-grouped, into train and validation (``data.val_fraction``);
2. the leakage guard checks train+val against test and train against val: no patient and no
   byte-identical file on both sides, or the run stops naming them;
3. the trainer fits on train; validation drives early stopping and the checkpoint choice;
4. the threshold (``evaluate.threshold``) and the optional calibrator (``evaluate.calibration``)
   are fitted on the validation predictions only, and saved in the fold folder;
5. the test fold is predicted once, at the end, by the best model.

:func:`merge_cv` pools the finished folds into out-of-fold predictions (every image once) and
metrics: per fold, pooled with 95% intervals from a bootstrap over patients, and mean/std
across folds. These figures estimate the recipe (config) and are the estimate for the final
model (see :class:`medtl.run.predictor.Predictor`), which is either

* ``evaluate.final_model: ensemble`` (default): the fold models, the mean of their calibrated
  scores with the median of the fold thresholds; or
* ``retrain``: one model trained on every image of the manifest into ``RUN/final``, once all
  folds are finished and merged, without a validation split or early stopping, for a fixed
  number of epochs per stage: the mean over folds of the epochs each stage ran up to the
  fold's best checkpoint, rounded half up and at least 1 (a stage that improved in no fold
  still gets 1 epoch, so every configured stage is trained). It keeps the last epoch's
  weights. Its threshold is the median of the folds' validation thresholds (on the raw score
  scale), the ensemble's rule: no held-out data are left to tune on. It has no calibrator: the
  fold calibrators were fitted to other models' scores, and no data are left to fit its own.
  Only ``run_cv`` with all folds (``medtl cv CONFIG``) retrains; ``fold=k`` and
  :func:`merge_cv` (``--merge``) do not. An interrupted retraining resumes from its last
  epoch; a finished one (``final/final.json``) is kept.

Folds can run as separate jobs (``run_cv(cfg, run_dir, fold=k)``): the run folder is named
from the config (or given), the fold assignment and config are written once and then reused,
and a lock keeps two jobs off the same fold. A fold whose folder has ``fold.json`` is done; an
interrupted one resumes from the trainer's last completed epoch. See
:mod:`medtl.run.layout` for the folder layout.

Example:
    >>> from medtl.config import load_config
    >>> from medtl.evaluate.cv import run_cv, merge_cv, format_cv
    >>> run = run_cv(load_config("configs/demo.yaml"))        # all folds, then merged
    >>> run_cv(cfg, run_dir="runs/cv1", fold=2)               # one fold, e.g. a cluster job
    >>> print(format_cv(merge_cv("runs/cv1")))                # pool the folds done so far
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from medtl.config import Config, ConfigError, load_resolved
from medtl.stats.metrics import summarize_folds
from medtl.stats.postprocess import PostProcess
from medtl.evaluate.tables import interval_warning, table_metrics
from medtl.io.atomic import create_once, jsonable, read_json, write_csv, write_json
from medtl.run.files import (
    decision_suffix, ensemble_thresholds, label_columns, read_postprocess, save_postprocess, score_columns,
    scores_from_frame, set_threshold, targets_from_frame, threshold_columns, write_postprocess,
)
from medtl.run.layout import (
    CKPT_DIR, CONFIG_FILE, CV_FILE, ENSEMBLE_FILE, FINAL_DIR, FINAL_DONE, FOLD_DONE, FOLDS_FILE, HISTORY_FILE,
    LOCK_FILE, METRICS_FILE, MODEL_FILE, OOF_FILE, SPLIT_FILE, STATE_FILE, TEST_PREDICTIONS, TEST_SKIPPED,
    VAL_PREDICTIONS, final_dir, finished_folds, fold_dir, is_cv_run,
)
from medtl.run.resume import check_same_config, cv_key_is_free, flatten

try:  # fcntl locks are released by the OS when a process dies, so a killed job leaves none
    import fcntl
except ImportError:  # pragma: no cover - Windows: no cross-process fold lock
    fcntl = None  # type: ignore[assignment]

__all__ = ["run_cv", "merge_cv", "format_cv", "run_folder", "FoldBusyError"]

# Keys added after runs existed: left out of the digest at their default, so a config written
# before them still finds its run folder (and an interrupted run resumes).
_ADDED_KEYS = {"data.label_separator": None, "data.frame": None, "data.max_pixels": 50_000_000}


class FoldBusyError(RuntimeError):
    """Another process is running this fold (its lock is held)."""


# --------------------------------------------------------------------------------------------
# Public API


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


NO_PATIENTS_NOTE = (
    "No patient ids (data.patient_column: none): every image counts as its own patient, so "
    "films of one patient can sit on both sides of a split and every figure is optimistic if patients "
    "have several films"
)
NO_PATIENTS_WARNING = "WARNING: n" + NO_PATIENTS_NOTE[1:]  # the console's form of the report's note


def run_cv(cfg: Config, run_dir: str | Path | None = None, fold: int | None = None,
           progress: bool = True) -> Path:
    """Cross-validate ``cfg``: train and test every fold (or only ``fold``) into a run folder.

    Args:
        cfg: the run config (``evaluate.folds``, ``evaluate.threshold``,
            ``evaluate.calibration``, ``data.val_fraction``, ``seed`` ...).
        run_dir: the run folder; default :func:`run_folder` (derived from the config). An
            existing folder is continued: finished folds are skipped, interrupted ones resumed.
        fold: run only this fold (0 .. folds-1), e.g. as one job of a cluster array; the folds
            are then pooled with :func:`merge_cv`. None runs all folds and merges them, then,
            with ``evaluate.final_model: retrain`` and every fold finished, trains (or resumes)
            the final model on all images into ``RUN/final``; a single fold never does.
        progress: print fold headers, the trainer's progress and the final table.

    Returns:
        The run folder.

    Raises:
        ConfigError: the config differs from the one the run folder was started with.
        LeakageError: a patient or identical file is on both sides of a split (e.g. an edited
            folds.csv); nothing is trained.
        DataError: the manifest changed since folds.csv was written, or a fold is empty.
        FoldBusyError: ``fold`` is being run by another process.
        RuntimeError: the retraining epochs cannot be derived (a fold lacks its history).

    Example:
        >>> run = run_cv(load_config("configs/demo.yaml"), progress=False)
        >>> sorted(p.name for p in run.iterdir())[:3]
        ['config.yaml', 'cv.json', 'ensemble.json']
    """
    _check_supported(cfg)
    from medtl.data.manifest import load_manifest

    k = cfg.evaluate.folds
    if fold is not None and not (isinstance(fold, (int, np.integer)) and 0 <= int(fold) < k):
        raise ValueError(f"fold: invalid value {fold!r}; expected 0 .. {k - 1} (evaluate.folds is {k})")
    run, cfg = _open_run(cfg, run_dir)
    manifest = load_manifest(cfg)
    assign = _assignment(run, cfg, manifest)
    # Guard every fold before training any, so a tampered split refuses to start at all.
    splits = {f: _fold_split(run, cfg, manifest, assign, f) for f in range(k)}
    _log(progress, f"Cross-validation run {run}: {len(manifest)} images, "
                   f"{manifest.df['patient_id'].nunique()} patients, {k} folds")
    for note in manifest.notes:  # e.g. label names read as no finding: said even when quiet
        print(f"Note: {note}", file=sys.stdout if progress else sys.stderr, flush=True)
    todo = range(k) if fold is None else [int(fold)]
    busy = []
    for f in todo:
        status = _run_fold(run, cfg, manifest, splits[f], f, progress, required=fold is not None)
        if status == "busy":
            busy.append(f)
    if fold is None:
        if busy:
            _log(progress, f"Fold(s) {', '.join(map(str, busy))} are running in other processes; "
                           f"merge later with medtl cv --merge {run}")
        metrics = merge_cv(run)
        if cfg.evaluate.final_model == "retrain":
            if not metrics["complete"]:
                _log(progress, "Final model not retrained: it needs every fold finished; run medtl cv CONFIG "
                               "again once they are")
            elif _retrain_final(run, cfg, manifest, metrics, progress):
                metrics["final"] = _final_summary(run, metrics["retrain_epochs_per_stage"], metrics["n_images"],
                                                  metrics["calibration"], None, None)
                write_json(run / METRICS_FILE, metrics)
        _log(progress, format_cv(metrics))
    return run


def merge_cv(run_dir: str | Path) -> dict[str, Any]:
    """Pool the finished folds of a CV run: out-of-fold predictions and metrics.

    Writes ``oof_predictions.csv`` (file, patient, fold, label, score[, score_calibrated],
    threshold, prediction; every image of the finished folds exactly once), ``metrics.json``
    and ``ensemble.json`` into the run folder. It never trains: with
    ``evaluate.final_model: retrain`` the final model is trained by :func:`run_cv` (all
    folds), and ``metrics["final"]`` says whether it is done.

    Args:
        run_dir: a folder made by :func:`run_cv`.

    Returns:
        The metrics dict (as written): ``per_fold``, ``pooled`` and ``pooled_ci`` (95%
        patient-bootstrap intervals), ``across_folds`` (mean/std), ``thresholds`` per fold,
        ``finished_folds`` and ``missing_folds``, ``final`` (with ``final_model: retrain``:
        the retrained model's epochs, threshold, state and a note), and more; see
        :func:`format_cv`.

    Raises:
        RuntimeError: no fold has finished, or a fold's predictions do not match folds.csv.

    Example:
        >>> m = merge_cv("runs/cv1")
        >>> m["pooled"]["roc_auc"], m["pooled_ci"]["roc_auc"]["low"], m["missing_folds"]
    """
    run = Path(run_dir)
    if not is_cv_run(run):
        raise FileNotFoundError(f"{run}: not a cross-validation run folder (no {CV_FILE}); "
                                "pass the folder printed by medtl cv")
    cv = read_json(run / CV_FILE)
    cfg = load_resolved(run / CONFIG_FILE)
    k, task, classes = int(cv["folds"]), cv["task"], list(cv["classes"])
    assign = pd.read_csv(run / FOLDS_FILE, dtype={"file": str, "patient": str})
    done = finished_folds(run, k)
    missing = [f for f in range(k) if f not in done]
    if not done:
        raise RuntimeError(f"{run}: no fold has finished yet (missing {', '.join(map(str, missing))}); "
                           "run medtl cv CONFIG --fold K first")
    frames, pps, info, skipped = [], {}, {}, []
    for f in done:
        df, pp, marker = _read_fold(run, f, assign, task, classes)
        frames.append(df)
        pps[f] = pp
        info[str(f)] = {k_: marker.get(k_) for k_ in (
            "n_train", "n_val", "n_test", "n_train_patients", "n_val_patients", "n_test_patients",
            "wall_time_s", "best")}
        skipped += [{"fold": f, "path": p, "reason": r} for p, r in marker.get("skipped", [])]
    order = {p: i for i, p in enumerate(assign["file"])}
    oof = pd.concat(frames, ignore_index=True)
    oof = oof.iloc[np.argsort([order[p] for p in oof["file"]], kind="stable")].reset_index(drop=True)
    dup = oof["file"][oof["file"].duplicated()].tolist()
    if dup:
        raise RuntimeError(f"{run}: file(s) predicted by more than one fold: {', '.join(dup[:10])}; "
                           "folds.csv and the fold folders disagree, start a new run")

    suffix = decision_suffix(oof, task, classes)
    tcols = threshold_columns(task, classes)

    def metrics_of(df: pd.DataFrame, sfx: str, raw_thr: bool, n_boot: int) -> tuple[dict, dict]:
        y = targets_from_frame(df, task, classes, where=str(run / OOF_FILE))
        s = scores_from_frame(df, task, classes, sfx, where=str(run / OOF_FILE))
        if not tcols:
            t = None
        elif raw_thr:
            t = np.array([pps[int(f)].raw_thresholds for f in df["fold"]], dtype=np.float64)
        else:
            t = df[tcols].to_numpy(dtype=np.float64)
        return table_metrics(task, classes, y, s, t, df["patient"].to_numpy(dtype=object),
                             n_boot=n_boot, seed=cfg.seed)

    per_fold = {str(f): metrics_of(oof[oof["fold"] == f], suffix, False, 0)[0] for f in done}
    pooled, pooled_ci = metrics_of(oof, suffix, False, cfg.evaluate.bootstrap)
    first = next(iter(pps.values()))
    ens = ensemble_thresholds(list(pps.values()))
    ensemble = {
        "members": [f"fold_{f}" for f in done],
        "combine": "mean of the fold models' " + ("calibrated " if suffix else "") + "scores",
        "thresholds": ens,
        "threshold_rule": (None if ens is None else
                           f"median of the fold thresholds, each chosen by {first.rule!r} on its validation split"),
        "complete": not missing,
    }
    metrics: dict[str, Any] = {
        "kind": "cv",
        "run_dir": str(run),
        "task": task,
        "classes": classes,
        "folds": k,
        "finished_folds": done,
        "missing_folds": missing,
        "complete": not missing,
        "n_images": int(len(assign)),
        "n_predicted": int(len(oof)),
        "n_patients": int(oof["patient"].nunique()),
        "skipped": skipped,
        "threshold_rule": first.rule,
        "calibration": first.calibration,
        "score": "score" + suffix,
        "thresholds": {str(f): pps[f].thresholds for f in done},
        "per_fold": per_fold,
        "pooled": pooled,
        "pooled_ci": pooled_ci,
        "across_folds": summarize_folds([per_fold[str(f)] for f in done]),
        "patient_ids": has_patient_ids(cfg),
        "bootstrap": {"n_boot": cfg.evaluate.bootstrap, "alpha": 0.05, "unit": "patient", "seed": cfg.seed,
                      "interval": "bca"},
        "ensemble": ensemble,
        "final_model": cfg.evaluate.final_model,
        "fold_info": info,
        "retrain_epochs_per_stage": _retrain_epochs(run, done),
        "wall_time_s": round(sum(float(v.get("wall_time_s") or 0.0) for v in info.values()), 2),
    }
    if cfg.evaluate.final_model == "retrain":
        metrics["final"] = _final_summary(run, metrics["retrain_epochs_per_stage"], len(assign), first.calibration,
                                          *_final_thresholds(list(pps.values())))
    notes = [f"fold {f}: {w}" for f in done for w in pps[f].extra.get("warnings", [])]
    few = interval_warning(task, classes, targets_from_frame(oof, task, classes, where=str(run / OOF_FILE)),
                           oof["patient"].to_numpy(dtype=object))
    if few:
        notes.append(f"pooled: {few}")
    if notes:
        metrics["warnings"] = notes
    if suffix:
        metrics["pooled_uncalibrated"] = metrics_of(oof, "", True, 0)[0]
        metrics["raw_thresholds"] = {str(f): pps[f].raw_thresholds for f in done}
    write_csv(run / OOF_FILE, oof)
    write_json(run / ENSEMBLE_FILE, ensemble)
    write_json(run / METRICS_FILE, metrics)
    return json.loads(json.dumps(_plain(metrics)))


# --------------------------------------------------------------------------------------------
# Run folder, fold assignment and splits


def config_digest(cfg: Config) -> str:
    """10 hex digits identifying what a CV run computes (machine-specific keys left out)."""
    flat = {k: v for k, v in flatten(cfg.to_dict()).items()
            if not cv_key_is_free(k) and not (k in _ADDED_KEYS and v == _ADDED_KEYS[k])}
    return hashlib.sha1(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _check_supported(cfg: Config) -> None:
    if cfg.task == "multiclass" and cfg.evaluate.calibration == "platt":
        raise ConfigError("evaluate.calibration: platt is binary-only; use temperature (or none) for multiclass")


def _open_run(cfg: Config, run_dir: str | Path | None) -> tuple[Path, Config]:
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
    return run, saved


def _class_text(manifest) -> list[str]:
    if manifest.task == "multilabel":
        t = manifest.targets()
        return [";".join(c for c, v in zip(manifest.classes, row) if v) for row in t]
    return [manifest.classes[int(i)] for i in manifest.df["label"]]


def _assignment(run: Path, cfg: Config, manifest) -> np.ndarray:
    """The fold of each manifest row, from folds.csv (written on first use)."""
    from medtl.data.manifest import DataError
    from medtl.data.splits import patient_kfold

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


def _fold_split(run: Path, cfg: Config, manifest, assign: np.ndarray, f: int):
    """(train_idx, val_idx, test_idx) of fold ``f`` from its split.csv (written on first use),
    after the leakage guard."""
    from medtl.data.manifest import DataError
    from medtl.data.splits import patient_holdout

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
    from medtl.data.splits import LeakageError, assert_no_leakage

    try:
        assert_no_leakage(manifest.subset(a), manifest.subset(b))
    except LeakageError as exc:
        raise LeakageError(f"{where}: {exc}") from None


# --------------------------------------------------------------------------------------------
# One fold


class _FoldLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.acquired = False

    def __enter__(self) -> _FoldLock:
        self.fh = open(self.path, "a+")
        if fcntl is None:
            self.acquired = True
            return self
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.acquired = True
        except OSError:
            self.acquired = False
        return self

    def __exit__(self, *exc: object) -> None:
        if self.acquired and fcntl is not None:
            fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


def _run_fold(run: Path, cfg: Config, manifest, split, f: int, progress: bool, required: bool) -> str:
    """Train, post-process and test fold ``f``; returns 'done', 'skipped' or 'busy'."""
    fdir = fold_dir(run, f)
    k = cfg.evaluate.folds
    if (fdir / FOLD_DONE).exists():
        _log(progress, f"Fold {f} (of 0..{k - 1}): already finished; skipped")
        return "skipped"
    with _FoldLock(fdir / LOCK_FILE) as lock:
        if not lock.acquired:
            if required:
                raise FoldBusyError(f"{fdir}: fold {f} is being run by another process (lock {fdir / LOCK_FILE}); "
                                    "wait for it, or run another fold")
            return "busy"
        if (fdir / FOLD_DONE).exists():  # finished by another process meanwhile
            return "skipped"
        t0 = time.perf_counter()
        train_idx, val_idx, test_idx = split
        df = manifest.df
        _log(progress, f"\n=== Fold {f} (of 0..{k - 1}): {len(train_idx)} train / {len(val_idx)} validation / "
                       f"{len(test_idx)} test images; {df['patient_id'].iloc[test_idx].nunique()} test patients")
        val_df, model = _train_fold(cfg, manifest, train_idx, val_idx, fdir, progress)
        t_trained = time.perf_counter()
        pp = _fit_postprocess(cfg, manifest, val_df, val_idx, fdir, f)
        used, raw, skipped = _predict_fold(cfg, fdir, model, manifest.subset(test_idx))
        del model
        _release()
        table = _test_table(used, f, raw, pp)
        write_csv(fdir / TEST_PREDICTIONS, table)
        if skipped:
            write_csv(fdir / TEST_SKIPPED, pd.DataFrame(skipped, columns=["path", "reason"]))
        trained = _read_trainer_metrics(fdir)
        marker = {
            "fold": f,
            "finished": True,
            "n_train": int(len(train_idx)),
            "n_val": int(len(val_df)),
            "n_test": int(len(table)),
            "n_train_patients": int(df["patient_id"].iloc[train_idx].nunique()),
            "n_val_patients": int(df["patient_id"].iloc[val_idx].nunique()),
            "n_test_patients": int(df["patient_id"].iloc[test_idx].nunique()),
            "thresholds": pp.thresholds,
            "threshold_rule": pp.rule,
            "calibration": pp.calibration,
            "skipped": [list(s) for s in skipped],
            "best": trained.get("best"),
            # the trainer's own clock covers every session of an interrupted, resumed fold
            "wall_time_s": round(float(trained.get("wall_time_s") or (t_trained - t0))
                                 + time.perf_counter() - t_trained, 2),
        }
        write_json(fdir / FOLD_DONE, marker)  # last: the fold counts as finished from here on
        decided = ("decision arg-max" if pp.thresholds is None else
                   f"threshold {format_thresholds(pp.thresholds, manifest.classes)} (chosen on validation)")
        _log(progress, f"Fold {f}: {decided}, "
                       f"{len(table)} test images predicted")
    return "done"


def _train_fold(cfg: Config, manifest, train_idx, val_idx, fdir: Path, progress: bool):
    """Train (or resume, or re-read) the fold's model; returns (validation predictions, model or None)."""
    from medtl.train.trainer import train

    if (fdir / CKPT_DIR / STATE_FILE).exists():
        res = train(cfg, manifest, train_idx, val_idx, resume=fdir, progress=progress)
    else:
        res = train(cfg, manifest, train_idx, val_idx, run_dir=fdir, progress=progress)
    return res.val_predictions, res.model


def _predict_fold(cfg: Config, fdir: Path, model, test_m):
    """Predict the test fold once with the best model: (rows used, raw scores (N, K), skipped)."""
    from medtl.data.pipeline import ImagePipeline
    from medtl.models.classifier import load_model

    if model is None:  # a fold finished before an interruption: its saved model
        model = load_model(fdir / MODEL_FILE)
    pipe = ImagePipeline(cfg)
    used = pipe.prepare(test_m)
    ds = pipe.dataset(used, training=False)
    raw = np.asarray(model.predict(ds.map(lambda x, y: x), verbose=0), dtype=np.float64)
    if raw.shape[0] != len(used):
        raise RuntimeError(f"{fdir}: {raw.shape[0]} test predictions for {len(used)} images")
    return used, raw, [(str(p), str(r)) for p, r in pipe.skipped]


def _release() -> None:
    """Free the fold's TensorFlow graph memory before the next fold."""
    keras = sys.modules.get("keras")
    if keras is not None:
        keras.backend.clear_session()


def _fit_postprocess(cfg: Config, manifest, val_df: pd.DataFrame, val_idx, fdir: Path, f: int) -> PostProcess:
    """Threshold and calibrator from the fold's validation predictions, and nothing else."""
    where = str(fdir / VAL_PREDICTIONS)
    allowed = set(np.asarray(manifest.paths, dtype=object)[val_idx])
    stray = sorted(set(val_df["path"]) - allowed) if "path" in val_df.columns else ["(no path column)"]
    if stray:
        raise RuntimeError(f"{where}: {len(stray)} file(s) outside fold {f}'s validation split, e.g. {stray[0]}; "
                           "refusing to choose a threshold on them")
    try:
        return save_postprocess(cfg, manifest.classes, val_df, fdir, where=where)
    except ValueError as exc:
        raise ValueError(f"fold {f}: {exc}") from None


def _test_table(used, f: int, raw: np.ndarray, pp: PostProcess) -> pd.DataFrame:
    task, classes = pp.task, pp.classes
    df = used.df
    out = pd.DataFrame({"file": df["path"].astype(str), "patient": df["patient_id"].astype(str), "fold": f})
    if task == "multilabel":
        for name, col in zip(classes, used.label_columns or classes):
            out[f"label_{name}"] = df[col].to_numpy()
    else:
        out["label"] = df["label"].to_numpy()
    for j, col in enumerate(score_columns(task, classes)):
        out[col] = raw[:, j]
    dec_scores = raw
    if pp.calibrators:
        dec_scores = pp.calibrate(raw)
        for j, col in enumerate(score_columns(task, classes, "_calibrated")):
            out[col] = dec_scores[:, j]
    for col, t in zip(threshold_columns(task, classes), pp.thresholds or []):
        out[col] = t
    dec = pp.decide(dec_scores)
    if task == "multilabel":
        for j, name in enumerate(classes):
            out[f"prediction_{name}"] = dec[:, j]
    else:
        out["prediction"] = dec[:, 0] if dec.ndim == 2 else dec
    return out


def _read_trainer_metrics(fdir: Path) -> dict:
    p = fdir / METRICS_FILE
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}


# --------------------------------------------------------------------------------------------
# Merge helpers


def _read_fold(run: Path, f: int, assign: pd.DataFrame, task: str, classes: list[str]):
    fd = fold_dir(run, f)
    marker = read_json(fd / FOLD_DONE)
    pp = read_postprocess(fd)
    df = pd.read_csv(fd / TEST_PREDICTIONS, dtype={"file": str, "patient": str})
    need = ["file", "patient", "fold", *label_columns(task, classes), *score_columns(task, classes),
            *threshold_columns(task, classes)]
    lacking = [c for c in need if c not in df.columns]
    if lacking:
        raise RuntimeError(f"{fd / TEST_PREDICTIONS}: missing column(s) {', '.join(lacking)}; "
                           f"delete {fd / FOLD_DONE} and re-run fold {f}")
    expected = set(assign["file"][assign["fold"] == f])
    skipped = {p for p, _ in marker.get("skipped", [])}
    got = set(df["file"])
    if got | skipped != expected or len(got) != len(df) or got & skipped:
        lost, extra = sorted(expected - got - skipped), sorted(got - expected)
        raise RuntimeError(
            f"{fd / TEST_PREDICTIONS}: does not cover fold {f} of folds.csv exactly once "
            f"({len(lost)} missing, e.g. {lost[:1]}; {len(extra)} extra, e.g. {extra[:1]}); "
            f"delete {fd / FOLD_DONE} and re-run fold {f}")
    return df, pp, marker


def _retrain_epochs(run: Path, done: list[int]) -> list[float] | None:
    """Mean over folds of the epochs each stage ran until the fold's best checkpoint.

    A stage contributes the epochs up to its last improvement of the overall best that is not
    after the chosen checkpoint (0 if it never improved it). This is the schedule a model
    retrained on all data would follow (``evaluate.final_model: retrain``).
    """
    per_fold = []
    for f in done:
        fd = fold_dir(run, f)
        hist, best = fd / HISTORY_FILE, _read_trainer_metrics(fd).get("best") or {}
        if not hist.exists() or "global_epoch" not in best:
            return None
        h = pd.read_csv(hist)
        if not {"stage", "epoch", "global_epoch", "best"} <= set(h.columns):
            return None
        improved = h[(h["best"].astype(str) == "True") & (h["global_epoch"] <= best["global_epoch"])]
        n_stages = int(h["stage"].max())
        per_fold.append([int(improved[improved["stage"] == s]["epoch"].max()) if (improved["stage"] == s).any()
                         else 0 for s in range(1, n_stages + 1)])
    if not per_fold or len({len(p) for p in per_fold}) != 1:
        return None
    return [float(v) for v in np.mean(per_fold, axis=0)]


def _retrain_schedule(means: list[float]) -> list[int]:
    """Epochs per stage of the final model: each mean rounded half up, and at least 1.

    A stage that improved in no fold (mean 0) still trains 1 epoch, so the final model goes
    through every configured stage like the recipe does; its effect is then not covered by the
    cross-validated estimate (the fold models kept their earlier weights), which is the price
    of one fixed schedule for all data.

    Example:
        >>> _retrain_schedule([0.0, 2.4, 2.5])
        [1, 2, 3]
    """
    return [max(1, int(np.floor(float(m) + 0.5))) for m in means]


def _final_thresholds(pps: list[PostProcess]) -> tuple[list[float] | None, str | None]:
    """(thresholds, rule text) of the retrained model: the median of the fold thresholds on the
    raw score scale (it has no calibrator); None for multiclass (arg-max)."""
    if pps[0].raw_thresholds is None:
        return None, None
    t = np.median(np.array([pp.raw_thresholds for pp in pps], dtype=np.float64), axis=0)
    raw = " (on uncalibrated scores)" if pps[0].calibrators else ""
    return ([float(v) for v in t],
            f"median of the fold thresholds, each chosen by {pps[0].rule!r} on its validation split{raw}")


def _final_summary(run: Path, means: list[float] | None, n_images: int, calibration: str,
                   thresholds: list[float] | None, rule: str | None) -> dict[str, Any]:
    """``metrics["final"]`` of a retrain run: from final/final.json once trained, else the plan."""
    marker = final_dir(run) / FINAL_DONE
    finished = marker.is_file()
    if finished:
        done = read_json(marker)
        epochs, n_images = done["epochs_per_stage"], done["n_images"]
        thresholds, rule = done["thresholds"], done["threshold_rule"]
    else:
        epochs = None if means is None else _retrain_schedule(means)
    e_text = "(unknown)" if epochs is None else ", ".join(map(str, epochs))
    if finished:
        note = (f"final model: one model retrained on all {n_images} images for {e_text} epochs per stage; "
                "its performance is estimated by the cross-validation above")
    else:
        note = (f"final model: one model to be retrained on all {n_images} images for {e_text} epochs per stage "
                "(NOT TRAINED YET: medtl cv CONFIG trains it once every fold is finished; --fold and --merge "
                "do not); its performance is estimated by the cross-validation above")
    out = {"kind": "retrain", "dir": FINAL_DIR, "finished": finished, "epochs_per_stage": epochs,
           "mean_best_epochs": means, "n_images": n_images, "thresholds": thresholds, "threshold_rule": rule,
           "calibration": "none", "note": note}
    if calibration != "none":
        out["caveat"] = (f"evaluate.calibration is {calibration}, but the final model has no calibrator (no held-out "
                         "data are left to fit one): the Brier score and ECE 'before calibration' describe its "
                         "scores; thresholded metrics hold (its threshold is on the raw scale)")
    return out


def _retrain_final(run: Path, cfg: Config, manifest, metrics: dict, progress: bool) -> bool:
    """Train (or resume) the final model on every image into RUN/final; False if it was
    already finished or another process holds it."""
    fin = final_dir(run)
    if (fin / FINAL_DONE).is_file():
        _log(progress, f"Final model {fin}: already trained; skipped")
        return False
    means = metrics.get("retrain_epochs_per_stage")
    if means is None:
        raise RuntimeError(f"{run}: cannot derive the final model's epochs: a fold folder lacks history.csv or "
                           "the best epoch in its metrics.json; delete that fold's fold.json and run medtl cv again")
    epochs = _retrain_schedule(means)
    done = list(metrics["finished_folds"])
    thresholds, rule = _final_thresholds(
        [read_postprocess(fold_dir(run, f)) for f in done])
    fin.mkdir(parents=True, exist_ok=True)
    with _FoldLock(fin / LOCK_FILE) as lock:
        if not lock.acquired:
            _log(progress, f"Final model {fin}: being trained by another process; run medtl cv CONFIG again "
                           "when it has finished")
            return False
        if (fin / FINAL_DONE).is_file():  # finished by another process meanwhile
            return False
        _log(progress, f"\n=== Final model: retraining on all {len(manifest)} images, no validation split, for "
                       f"{', '.join(map(str, epochs))} epochs per stage (mean best epochs over folds: "
                       f"{', '.join(f'{m:.2f}' for m in means)})")
        trained = _train_final(cfg, manifest, fin, epochs, progress)
        _release()
        pp = PostProcess(task=cfg.task, classes=list(manifest.classes),
                         rule=None if thresholds is None else cfg.evaluate.threshold, calibration="none",
                         thresholds=thresholds, raw_thresholds=thresholds, calibrators=None, n_val=0,
                         extra={"threshold_rule": rule, "folds": done})
        write_postprocess(fin, pp)
        if thresholds is not None:
            set_threshold(fin, thresholds[0] if cfg.task == "binary" else thresholds, rule=rule)
        write_json(fin / FINAL_DONE, {  # last: the final model counts as finished from here on
            "finished": True,
            "kind": "retrain",
            "epochs_per_stage": epochs,
            "mean_best_epochs": means,
            "folds": done,
            "n_images": int(trained["n_train"]),
            "n_patients": int(trained["n_train_patients"]),
            "thresholds": thresholds,
            "threshold_rule": rule,
            "calibration": "none",
            "wall_time_s": trained.get("wall_time_s"),
        })
    _log(progress, f"Final model: {fin / MODEL_FILE}, "
                   f"threshold {format_thresholds(thresholds, manifest.classes)}")
    return True


def _train_final(cfg: Config, manifest, fin: Path, epochs: list[int], progress: bool) -> dict:
    """Train (or resume) the fixed-epoch model on every image; returns the trainer's metrics."""
    from medtl.train.trainer import train

    every = np.arange(len(manifest))
    if (fin / CKPT_DIR / STATE_FILE).exists():
        res = train(cfg, manifest, every, None, resume=fin, progress=progress, fixed_epochs=epochs)
    else:
        res = train(cfg, manifest, every, None, run_dir=fin, progress=progress, fixed_epochs=epochs)
    return res.metrics


def _plain(x: Any) -> Any:
    return jsonable(x)


# --------------------------------------------------------------------------------------------
# Printing


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(msg, flush=True)


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "-" if v != v else f"{v:.{digits}f}"
    return str(v)


def format_thresholds(v: Any, names: Sequence[str] | None = None) -> str:
    """Thresholds (one value or a list) to 4 decimals; ``arg-max`` for None (multiclass).

    With ``names`` (multilabel: one per threshold) each value is labelled, e.g. ``effusion 0.31``.
    """
    if v is None:
        return "arg-max"
    values = [_fmt(float(x), 4) for x in np.atleast_1d(np.asarray(v, dtype=np.float64))]
    if names is not None and len(names) == len(values) > 1:
        values = [f"{n} {x}" for n, x in zip(names, values)]
    return ", ".join(values)


def _ci_text(m: dict, ci: dict, key: str) -> str:
    c = ci.get(key) if ci else None
    text = _fmt(m.get(key))
    if c and c.get("low") is not None:
        text += f" [{_fmt(c['low'])}, {_fmt(c['high'])}]"
    return text


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


_SHOWN = ("roc_auc", "pr_auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "ppv", "npv",
          "f1", "brier", "ece")


def _multiclass_flat(m: dict) -> dict:
    """The headline multiclass figures of a metrics (or mean/std) dict, flat."""
    return {"macro_roc_auc": m["macro"]["roc_auc"], "accuracy": m["accuracy"],
            "balanced_accuracy": m["balanced_accuracy"], "macro_f1": m["macro"]["f1"],
            "brier": m["brier"], "ece": m["ece"]}


def format_cv(metrics: dict[str, Any]) -> str:
    """A readable table of :func:`merge_cv`'s metrics: pooled with 95% CIs, mean ± sd, per fold.

    Example:
        >>> print(format_cv(merge_cv("runs/cv1")))
    """
    task, done = metrics["task"], metrics["finished_folds"]
    head = (f"Cross-validation {metrics['run_dir']}: {len(done)} of {metrics['folds']} folds finished, "
            f"{metrics['n_predicted']} images, {metrics['n_patients']} patients")
    lines = [head]
    if metrics["missing_folds"]:
        lines.append(f"MISSING folds: {', '.join(map(str, metrics['missing_folds']))} (pooled figures cover "
                     "only the finished folds)")
    for w in metrics.get("warnings", []):
        lines.append(f"WARNING {w}")
    if metrics.get("skipped"):
        lines.append(f"{len(metrics['skipped'])} unreadable test image(s) left out (listed in metrics.json)")
    if metrics.get("patient_ids") is False:  # absent (older runs): unknown, say nothing
        lines.append(NO_PATIENTS_WARNING)
    rule = metrics.get("threshold_rule")
    decision = f"threshold: {rule} on each fold's validation split" if rule else "decision: arg-max"
    lines.append(f"{decision}; calibration: "
                 f"{metrics['calibration']}; intervals: 95% "
                 f"{ {'bca': 'BCa'}.get(metrics['bootstrap'].get('interval'), 'percentile')} "
                 "bootstrap over patients "
                 f"({metrics['bootstrap']['n_boot']} replicates)")
    fold_cols = [f"fold {f}" for f in done]
    header = ["metric", "pooled [95% CI]", "mean ± sd", *fold_cols]

    def rows_for(pooled: dict, ci: dict, per: dict[str, dict], across: dict, keys) -> list[list[str]]:
        rows = []
        for key in keys:
            if key not in pooled:
                continue
            a = across.get(key, {})
            sd = "" if not a or a.get("std") is None or a["std"] != a["std"] else f" ± {a['std']:.3f}"
            rows.append([key, _ci_text(pooled, ci, key), (_fmt(a.get("mean")) + sd) if a else "-",
                         *[_fmt(per[str(f)].get(key)) for f in done]])
        return rows

    per, across = metrics["per_fold"], metrics["across_folds"]
    if task == "binary":
        rows = rows_for(metrics["pooled"], metrics["pooled_ci"], per, across, _SHOWN)
        rows.append(["threshold", "-", "-", *[_fmt(per[str(f)].get("threshold"), 4) for f in done]])
        rows.append(["n images", _fmt(metrics["pooled"]["n"]), "-", *[_fmt(per[str(f)]["n"]) for f in done]])
        lines.append(_table(header, rows))
        if "pooled_uncalibrated" in metrics:
            u = metrics["pooled_uncalibrated"]
            lines.append(f"before calibration (pooled): brier {_fmt(u['brier'])}, ece {_fmt(u['ece'])}; "
                         f"after: brier {_fmt(metrics['pooled']['brier'])}, ece {_fmt(metrics['pooled']['ece'])}")
    elif task == "multilabel":
        for name in metrics["classes"]:
            lines.append(f"\n[{name}]")
            ci = metrics["pooled_ci"].get("per_label", {}).get(name, {})
            rows = rows_for(metrics["pooled"]["per_label"][name], ci,
                            {str(f): per[str(f)]["per_label"][name] for f in done},
                            across.get("per_label", {}).get(name, {}), _SHOWN)
            lines.append(_table(header, rows))
        lines.append("\n[macro]")
        pooled_ci = metrics["pooled_ci"]
        macro_ci = {"roc_auc": pooled_ci["macro_roc_auc"]} if "macro_roc_auc" in pooled_ci else {}
        lines.append(_table(header, rows_for(metrics["pooled"]["macro"], macro_ci,
                                             {str(f): per[str(f)]["macro"] for f in done}, across.get("macro", {}),
                                             _SHOWN)))
    else:
        flat_f = {str(f): _multiclass_flat(per[str(f)]) for f in done}
        flat_a = _multiclass_flat(across)
        flat_p = _multiclass_flat(metrics["pooled"])
        lines.append(_table(header, rows_for(flat_p, metrics["pooled_ci"], flat_f, flat_a, list(flat_p))))
        rows = [[f"{name} (roc_auc)", _fmt(metrics["pooled"]["per_class"][name]["roc_auc"]), "-",
                 *[_fmt(per[str(f)]["per_class"][name]["roc_auc"]) for f in done]] for name in metrics["classes"]]
        lines.append(_table(header, rows))
    final = metrics.get("final")
    if final:
        lines.append(final["note"])
        lines.append(f"final model threshold {format_thresholds(final.get('thresholds'), metrics['classes'])} = "
                     f"{final.get('threshold_rule') or 'arg-max'}; it has no calibrator")
        if final.get("caveat"):
            lines.append(f"NOTE {final['caveat']}")
    else:
        ens = metrics.get("ensemble", {})
        decision = (f"threshold {format_thresholds(ens.get('thresholds'), metrics['classes'])} = "
                    f"{ens.get('threshold_rule')}"
                    if ens.get("thresholds") is not None else "decision: the class with the highest mean score")
        lines.append(f"final model: ensemble of {len(ens.get('members', []))} fold models ({ens.get('combine')}); "
                     f"{decision}")
    return "\n".join(lines)
