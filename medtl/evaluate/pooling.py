"""Pooling the finished folds of a cross-validation run: out-of-fold predictions and metrics.

:func:`merge_cv` reads each finished fold's test predictions, checks that together they cover
``folds.csv`` exactly once, and computes metrics per fold, pooled (with 95% intervals from a
bootstrap over patients) and as mean/std across folds; it also describes the final model the
figures estimate (the fold ensemble, or the retrained model of :mod:`medtl.evaluate.final`).
It never trains, so it can run at any time, on however many folds have finished.

Example:
    >>> from medtl.evaluate.pooling import merge_cv
    >>> m = merge_cv("runs/cv1")
    >>> m["pooled"]["roc_auc"], m["pooled_ci"]["roc_auc"]["low"], m["missing_folds"]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medtl.config import load_resolved
from medtl.evaluate.cv_folder import has_patient_ids
from medtl.evaluate.probe import probe_summary
from medtl.evaluate.final import final_summary, final_thresholds, retrain_epochs
from medtl.evaluate.tables import interval_warning, table_metrics
from medtl.io.atomic import jsonable, read_json, write_csv, write_json
from medtl.run.files import (
    decision_suffix, ensemble_thresholds, label_columns, read_postprocess, score_columns, scores_from_frame,
    targets_from_frame, threshold_columns,
)
from medtl.run.layout import (
    CONFIG_FILE, CV_FILE, ENSEMBLE_FILE, FOLD_DONE, FOLDS_FILE, METRICS_FILE, OOF_FILE, TEST_PREDICTIONS,
    finished_folds, fold_dir, is_cv_run,
)
from medtl.stats.metrics import summarize_folds
from medtl.stats.postprocess import PostProcess
from medtl.stats.selective import selective_summary

__all__ = ["merge_cv", "pooled_thresholds"]


def merge_cv(run_dir: str | Path) -> dict[str, Any]:
    """Pool the finished folds of a CV run: out-of-fold predictions and metrics.

    Writes ``oof_predictions.csv`` (file, patient, fold, label, score[, score_calibrated],
    threshold, prediction; every image of the finished folds exactly once), ``metrics.json``
    and ``ensemble.json`` into the run folder. It never trains: with
    ``evaluate.final_model: retrain`` the final model is trained by
    :func:`~medtl.evaluate.cv.run_cv` (all folds), and ``metrics["final"]`` says whether it is
    done.

    Args:
        run_dir: a folder made by :func:`~medtl.evaluate.cv.run_cv`.

    Returns:
        The metrics dict (as written): ``per_fold``, ``pooled`` and ``pooled_ci`` (95%
        patient-bootstrap intervals), ``across_folds`` (mean/std), ``thresholds`` per fold,
        ``finished_folds`` and ``missing_folds``, ``final`` (with ``final_model: retrain``:
        the retrained model's epochs, threshold, state and a note), ``selective`` (binary:
        accuracy and balanced accuracy with 100/90/80% of films kept, the least confident,
        ``|logit(score) - logit(threshold)|``, referred first;
        :func:`medtl.stats.selective.selective_summary`), and more; see
        :func:`~medtl.evaluate.formatting.format_cv`.

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
        "threshold_source": "median",
        "complete": not missing,
    }
    pooled_final: tuple[list[float] | None, str | None] | None = None
    if cfg.evaluate.ensemble_threshold == "pooled" and ens is not None:
        ensemble.update(pooled_thresholds(oof, task, classes, suffix, first.rule, "none", cfg.evaluate.bootstrap,
                                          cfg.seed))
        if cfg.evaluate.final_model == "retrain":  # the retrained model has raw scores only
            raw = pooled_thresholds(oof, task, classes, "", first.rule, first.calibration, 0, cfg.seed)
            pooled_final = raw["raw_thresholds"], raw["threshold_rule"]
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
        "retrain_epochs_per_stage": retrain_epochs(run, done),
        "wall_time_s": round(sum(float(v.get("wall_time_s") or 0.0) for v in info.values()), 2),
    }
    if cfg.evaluate.final_model == "retrain":
        metrics["final"] = final_summary(run, metrics["retrain_epochs_per_stage"], len(assign), first.calibration,
                                         *(pooled_final or final_thresholds(list(pps.values()))))
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
    if task == "binary":  # films to refer: accuracy when the least confident 10% / 20% are referred
        yb = targets_from_frame(oof, task, classes, where=str(run / OOF_FILE))[:, 0]
        sb = scores_from_frame(oof, task, classes, suffix, where=str(run / OOF_FILE))[:, 0]
        metrics["selective"] = selective_summary(yb, sb, oof[tcols[0]].to_numpy(dtype=np.float64))
    probe = probe_summary(oof, "score" + suffix)  # evaluate.linear_probe: the baseline beside fine-tuning
    if probe is not None:
        metrics["probe"] = probe
    write_csv(run / OOF_FILE, oof)
    write_json(run / ENSEMBLE_FILE, ensemble)
    write_json(run / METRICS_FILE, metrics)
    return json.loads(json.dumps(jsonable(metrics)))


def pooled_thresholds(oof: pd.DataFrame, task: str, classes: list[str], suffix: str, rule: str, calibration: str,
                      n_boot: int, seed: int) -> dict[str, Any]:
    """The threshold of ``evaluate.ensemble_threshold: pooled``: ``rule`` applied once to the
    out-of-fold scores of every film (column ``score<suffix>``), not to one small validation
    split per fold.

    The pooled cut sees all films, about six times one fold's validation split at 5 folds,
    so it moves less from sample to sample (its patient-bootstrap interval says how much). It
    is chosen on the same scores the pooled CV figures are computed from, so those figures,
    which use each fold's own validation threshold, do not estimate it without optimism.

    Args:
        oof: the out-of-fold predictions (``oof_predictions.csv``).
        task: binary or multilabel (multiclass decides by arg-max and has no threshold).
        classes: the class (label) names.
        suffix: ``""`` for raw scores, ``"_calibrated"`` for the folds' calibrated scores.
        rule: ``evaluate.threshold``.
        calibration: a calibrator to fit on the pooled scores first (``none`` on calibrated
            scores; the retrained final model's raw cut uses the run's own, so that
            ``calibrated:P`` means the same probability).
        n_boot: bootstrap replicates of the interval (patients resampled); 0 skips it.
        seed: bootstrap seed.

    Returns:
        ``thresholds`` (on the scale of ``score<suffix>``), ``raw_thresholds``,
        ``threshold_ci``, ``threshold_rule`` (in words) and ``threshold_source: pooled``.

    Example:
        >>> pooled_thresholds(oof, "binary", ["normal", "pneumonia"], "", "youden", "none", 200, 0)["thresholds"]
    """
    y = targets_from_frame(oof, task, classes, where=OOF_FILE)
    s = scores_from_frame(oof, task, classes, suffix, where=OOF_FILE)
    patients = oof["patient"].to_numpy(dtype=object)
    pp = PostProcess.fit(task, classes, y, s, rule, calibration, groups=patients, n_boot=n_boot, seed=seed)
    scale = "calibrated " if suffix else ""
    return {"thresholds": pp.thresholds, "raw_thresholds": pp.raw_thresholds, "threshold_ci": pp.threshold_ci,
            "threshold_source": "pooled",
            "threshold_rule": (f"chosen by {rule!r} on the pooled out-of-fold {scale}scores of all {len(oof)} films "
                               f"({len(set(patients))} patients) of folds "
                               f"{', '.join(map(str, sorted(set(oof['fold'].astype(int)))))}")}


def _read_fold(run: Path, f: int, assign: pd.DataFrame, task: str,
               classes: list[str]) -> tuple[pd.DataFrame, PostProcess, dict]:
    """A finished fold's (test predictions, post-processing, fold.json), checked against folds.csv."""
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
