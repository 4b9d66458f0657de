"""The final model of ``evaluate.final_model: retrain``: one model trained on every image into
``RUN/final`` once all folds are finished and merged.

It has no validation split and no early stopping, so its schedule and threshold come from the
folds: each stage trains the mean over folds of the epochs that stage ran up to the fold's best
checkpoint, rounded half up and at least 1 (:func:`retrain_schedule`), and its threshold is the
median of the folds' validation thresholds on the raw score scale (:func:`final_thresholds`), or
with ``evaluate.ensemble_threshold: pooled`` the rule applied to the pooled raw out-of-fold
scores (:func:`medtl.evaluate.pooling.pooled_thresholds`).
It has no calibrator: no held-out data are left to fit one. An interrupted retraining resumes
from its last epoch; a finished one (``final/final.json``) is kept.

Example:
    >>> retrain_schedule([0.0, 2.4, 2.5])
    [1, 2, 3]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medtl.config import Config
from medtl.evaluate.folds import FoldLock, read_trainer_metrics, release_memory
from medtl.evaluate.formatting import format_thresholds, log
from medtl.io.atomic import read_json, write_json
from medtl.run.files import read_postprocess, set_threshold, write_postprocess
from medtl.run.layout import (
    CKPT_DIR, FINAL_DIR, FINAL_DONE, HISTORY_FILE, LOCK_FILE, MODEL_FILE, STATE_FILE, final_dir, fold_dir,
)
from medtl.stats.postprocess import PostProcess

__all__ = ["retrain_epochs", "retrain_schedule", "final_thresholds", "final_summary", "retrain_final"]


def retrain_epochs(run: Path, done: list[int]) -> list[float] | None:
    """Mean over folds of the epochs each stage ran until the fold's best checkpoint.

    A stage contributes the epochs up to its last improvement of the overall best that is not
    after the chosen checkpoint (0 if it never improved it). This is the schedule a model
    retrained on all data would follow (``evaluate.final_model: retrain``).
    """
    per_fold = []
    for f in done:
        fd = fold_dir(run, f)
        hist, best = fd / HISTORY_FILE, read_trainer_metrics(fd).get("best") or {}
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


def retrain_schedule(means: list[float]) -> list[int]:
    """Epochs per stage of the final model: each mean rounded half up, and at least 1.

    A stage that improved in no fold (mean 0) still trains 1 epoch, so the final model goes
    through every configured stage like the recipe does; its effect is then not covered by the
    cross-validated estimate (the fold models kept their earlier weights), which is the price
    of one fixed schedule for all data.

    Example:
        >>> retrain_schedule([0.0, 2.4, 2.5])
        [1, 2, 3]
    """
    return [max(1, int(np.floor(float(m) + 0.5))) for m in means]


def final_thresholds(pps: list[PostProcess]) -> tuple[list[float] | None, str | None]:
    """(thresholds, rule text) of the retrained model: the median of the fold thresholds on the
    raw score scale (it has no calibrator); None for multiclass (arg-max)."""
    if pps[0].raw_thresholds is None:
        return None, None
    t = np.median(np.array([pp.raw_thresholds for pp in pps], dtype=np.float64), axis=0)
    raw = " (on uncalibrated scores)" if pps[0].calibrators else ""
    return ([float(v) for v in t],
            f"median of the fold thresholds, each chosen by {pps[0].rule!r} on its validation split{raw}")


def final_summary(run: Path, means: list[float] | None, n_images: int, calibration: str,
                  thresholds: list[float] | None, rule: str | None) -> dict[str, Any]:
    """``metrics["final"]`` of a retrain run: from final/final.json once trained, else the plan."""
    marker = final_dir(run) / FINAL_DONE
    finished = marker.is_file()
    if finished:
        done = read_json(marker)
        epochs, n_images = done["epochs_per_stage"], done["n_images"]
        thresholds, rule = done["thresholds"], done["threshold_rule"]
    else:
        epochs = None if means is None else retrain_schedule(means)
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


def retrain_final(run: Path, cfg: Config, manifest, metrics: dict, progress: bool) -> bool:
    """Train (or resume) the final model on every image into RUN/final; False if it was
    already finished or another process holds it.

    Args:
        run: the CV run folder, every fold finished and merged.
        cfg: the run's own config.
        manifest: the whole manifest.
        metrics: :func:`~medtl.evaluate.pooling.merge_cv`'s metrics of the run.
        progress: print what is trained and the trainer's progress.

    Raises:
        RuntimeError: the epochs cannot be derived (a fold lacks its history).
    """
    fin = final_dir(run)
    if (fin / FINAL_DONE).is_file():
        log(progress, f"Final model {fin}: already trained; skipped")
        return False
    means = metrics.get("retrain_epochs_per_stage")
    if means is None:
        raise RuntimeError(f"{run}: cannot derive the final model's epochs: a fold folder lacks history.csv or "
                           "the best epoch in its metrics.json; delete that fold's fold.json and run medtl cv again")
    epochs = retrain_schedule(means)
    done = list(metrics["finished_folds"])
    fold_pps = [read_postprocess(fold_dir(run, f)) for f in done]
    planned = metrics.get("final") or {}  # merge_cv chose them (evaluate.ensemble_threshold)
    thresholds, rule = ((planned["thresholds"], planned["threshold_rule"]) if "threshold_rule" in planned
                        else final_thresholds(fold_pps))
    fin.mkdir(parents=True, exist_ok=True)
    with FoldLock(fin / LOCK_FILE) as lock:
        if not lock.acquired:
            log(progress, f"Final model {fin}: being trained by another process; run medtl cv CONFIG again "
                          "when it has finished")
            return False
        if (fin / FINAL_DONE).is_file():  # finished by another process meanwhile
            return False
        log(progress, f"\n=== Final model: retraining on all {len(manifest)} images, no validation split, for "
                      f"{', '.join(map(str, epochs))} epochs per stage (mean best epochs over folds: "
                      f"{', '.join(f'{m:.2f}' for m in means)})")
        trained = _train_final(cfg, manifest, fin, epochs, progress)
        release_memory()
        pp = PostProcess(task=cfg.task, classes=list(manifest.classes),
                         rule=None if thresholds is None else cfg.evaluate.threshold, calibration="none",
                         thresholds=thresholds, raw_thresholds=thresholds, calibrators=None, n_val=0,
                         extra={"threshold_rule": rule, "folds": done},
                         # the views the fold thresholds were chosen under; folds that differ give
                         # e.g. "none,shift", which matches no mode, so prediction warns
                         tta=",".join(sorted({p.tta for p in fold_pps})))
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
    log(progress, f"Final model: {fin / MODEL_FILE}, "
                  f"threshold {format_thresholds(thresholds, manifest.classes)}")
    return True


def _train_final(cfg: Config, manifest, fin: Path, epochs: list[int], progress: bool) -> dict:
    """Train (or resume) the fixed-epoch model on every image; returns the trainer's metrics."""
    from medtl.train.trainer import train  # why: loads TensorFlow; medtl.evaluate imports without it

    every = np.arange(len(manifest))
    if (fin / CKPT_DIR / STATE_FILE).exists():
        res = train(cfg, manifest, every, None, resume=fin, progress=progress, fixed_epochs=epochs)
    else:
        res = train(cfg, manifest, every, None, run_dir=fin, progress=progress, fixed_epochs=epochs)
    return res.metrics
