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

The parts live in their own modules: the run folder, its digest and the split files in
:mod:`medtl.evaluate.cv_folder`, one fold and its lock in :mod:`medtl.evaluate.folds`, pooling
in :mod:`medtl.evaluate.pooling`, the final retraining in :mod:`medtl.evaluate.final`, and the
console text in :mod:`medtl.evaluate.formatting`. This module runs them in order, and keeps
their public names importable from here.

Example:
    >>> from medtl.config import load_config
    >>> from medtl.evaluate.cv import run_cv, merge_cv, format_cv
    >>> run = run_cv(load_config("configs/demo.yaml"))        # all folds, then merged
    >>> run_cv(cfg, run_dir="runs/cv1", fold=2)               # one fold, e.g. a cluster job
    >>> print(format_cv(merge_cv("runs/cv1")))                # pool the folds done so far
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from medtl.config import Config
from medtl.data.manifest import load_manifest
from medtl.evaluate.cv_folder import (
    check_supported, config_digest, fold_assignment, fold_split, has_patient_ids, open_run, run_folder,
)
from medtl.evaluate.final import final_summary, retrain_final
from medtl.evaluate.folds import FoldBusyError, run_fold
from medtl.evaluate.formatting import NO_PATIENTS_NOTE, NO_PATIENTS_WARNING, format_cv, format_thresholds, log
from medtl.evaluate.probe import format_probe
from medtl.evaluate.pooling import merge_cv
from medtl.io.atomic import write_json
from medtl.run.layout import METRICS_FILE
from medtl.train.tracking import finish_cv_tracking, start_cv_tracking

# Names of the parts, re-exported: ``from medtl.evaluate.cv import merge_cv`` and the like are
# how the command line, the report and users' scripts reach them.
__all__ = ["run_cv", "merge_cv", "format_cv", "run_folder", "FoldBusyError", "config_digest", "format_thresholds",
           "has_patient_ids", "NO_PATIENTS_NOTE", "NO_PATIENTS_WARNING"]


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
    check_supported(cfg)
    k = cfg.evaluate.folds
    if fold is not None and not (isinstance(fold, (int, np.integer)) and 0 <= int(fold) < k):
        raise ValueError(f"fold: invalid value {fold!r}; expected 0 .. {k - 1} (evaluate.folds is {k})")
    # The data are checked before the run folder exists, so a refused run leaves no folder.
    # The run's saved config may differ only in keys that do not touch the manifest.
    manifest = load_manifest(cfg)
    run, cfg = open_run(cfg, run_dir)
    start_cv_tracking(cfg, run)  # train.log_to: mlflow: the folds nest under this run's MLflow run
    assign = fold_assignment(run, cfg, manifest)
    # Guard every fold before training any, so a tampered split refuses to start at all.
    splits = {f: fold_split(run, cfg, manifest, assign, f) for f in range(k)}
    log(progress, f"Cross-validation run {run}: {len(manifest)} images, "
                  f"{manifest.df['patient_id'].nunique()} patients, {k} folds")
    for note in manifest.notes:  # e.g. label names read as no finding: said even when quiet
        print(f"Note: {note}", file=sys.stdout if progress else sys.stderr, flush=True)
    todo = range(k) if fold is None else [int(fold)]
    busy = []
    for f in todo:
        status = run_fold(run, cfg, manifest, splits[f], f, progress, required=fold is not None)
        if status == "busy":
            busy.append(f)
    if fold is None:
        if busy:
            log(progress, f"Fold(s) {', '.join(map(str, busy))} are running in other processes; "
                          f"merge later with medtl cv --merge {run}")
        metrics = merge_cv(run)
        if cfg.evaluate.final_model == "retrain":
            if not metrics["complete"]:
                log(progress, "Final model not retrained: it needs every fold finished; run medtl cv CONFIG "
                              "again once they are")
            elif retrain_final(run, cfg, manifest, metrics, progress):
                metrics["final"] = final_summary(run, metrics["retrain_epochs_per_stage"], metrics["n_images"],
                                                 metrics["calibration"], None, None)
                write_json(run / METRICS_FILE, metrics)
        log(progress, format_cv(metrics))
        if metrics["complete"]:  # a fold still running elsewhere keeps the MLflow run open
            finish_cv_tracking(cfg, run, metrics.get("pooled") or {})
        if "probe" in metrics:  # evaluate.linear_probe
            log(progress, "Pooled " + format_probe(metrics["probe"]["pooled"]))
    return run
