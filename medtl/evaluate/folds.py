"""One fold of a cross-validation run: train, fit the threshold and calibrator on validation,
predict the test fold once, under a lock that keeps two jobs off the same fold.

A fold's folder (see :mod:`medtl.run.layout`) counts as finished once ``fold.json`` is written,
which is always last; an interrupted fold resumes from the trainer's last completed epoch.
The lock is an ``fcntl`` lock, which the OS releases when its process dies, so a killed
cluster job never leaves a fold blocked. The same lock guards the retrained final model
(:mod:`medtl.evaluate.final`).

Example:
    >>> status = run_fold(run, cfg, manifest, fold_split(run, cfg, manifest, assign, 2), 2,
    ...                   progress=True, required=True)   # 'done', 'skipped' or 'busy'
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from medtl.config import Config
from medtl.evaluate.formatting import format_thresholds, log
from medtl.io.atomic import write_csv, write_json
from medtl.run.files import save_postprocess, score_columns, threshold_columns
from medtl.run.layout import (
    CKPT_DIR, FOLD_DONE, LOCK_FILE, METRICS_FILE, MODEL_FILE, STATE_FILE, TEST_PREDICTIONS, TEST_SKIPPED,
    VAL_PREDICTIONS, fold_dir,
)
from medtl.stats.postprocess import PostProcess

try:  # fcntl locks are released by the OS when a process dies, so a killed job leaves none
    import fcntl
except ImportError:  # pragma: no cover - Windows: no cross-process fold lock
    fcntl = None  # type: ignore[assignment]

__all__ = ["run_fold", "FoldBusyError", "FoldLock", "release_memory", "read_trainer_metrics"]


class FoldBusyError(RuntimeError):
    """Another process is running this fold (its lock is held)."""


class FoldLock:
    """A non-blocking exclusive lock on ``path``; ``acquired`` says whether this process holds it.

    Example:
        >>> with FoldLock(fdir / LOCK_FILE) as lock:
        ...     if lock.acquired:
        ...         ...  # this process owns the fold
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.acquired = False

    def __enter__(self) -> FoldLock:
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


def run_fold(run: Path, cfg: Config, manifest, split, f: int, progress: bool, required: bool) -> str:
    """Train, post-process and test fold ``f``; returns 'done', 'skipped' or 'busy'.

    Args:
        run: the CV run folder.
        cfg: the run's own config.
        manifest: the whole manifest.
        split: (train_idx, val_idx, test_idx) from :func:`~medtl.evaluate.cv_folder.fold_split`.
        f: the fold number.
        progress: print the fold's header, the trainer's progress and its result.
        required: raise :class:`FoldBusyError` instead of returning 'busy' when another process
            holds the fold (a job asked for this fold by number).
    """
    fdir = fold_dir(run, f)
    k = cfg.evaluate.folds
    if (fdir / FOLD_DONE).exists():
        log(progress, f"Fold {f} (of 0..{k - 1}): already finished; skipped")
        return "skipped"
    with FoldLock(fdir / LOCK_FILE) as lock:
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
        log(progress, f"\n=== Fold {f} (of 0..{k - 1}): {len(train_idx)} train / {len(val_idx)} validation / "
                      f"{len(test_idx)} test images; {df['patient_id'].iloc[test_idx].nunique()} test patients")
        val_df, model = _train_fold(cfg, manifest, train_idx, val_idx, fdir, progress)
        t_trained = time.perf_counter()
        # The trainer's metrics.json says which predict.tta views its validation scores average
        # (none for folds trained before it said so), so the threshold records what it was chosen on.
        val_tta = str(read_trainer_metrics(fdir).get("val_tta") or "none")
        pp = _fit_postprocess(cfg, manifest, val_df, val_idx, fdir, f, tta=val_tta)
        used, raw, skipped = _predict_fold(cfg, fdir, model, manifest.subset(test_idx))
        del model
        release_memory()
        table = _test_table(used, f, raw, pp)
        probe = _fold_probe(cfg, manifest, np.concatenate([train_idx, val_idx]), used, table, fdir, f, progress)
        write_csv(fdir / TEST_PREDICTIONS, table)
        if skipped:
            write_csv(fdir / TEST_SKIPPED, pd.DataFrame(skipped, columns=["path", "reason"]))
        trained = read_trainer_metrics(fdir)
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
            "probe": probe,
            # the trainer's own clock covers every session of an interrupted, resumed fold
            "wall_time_s": round(float(trained.get("wall_time_s") or (t_trained - t0))
                                 + time.perf_counter() - t_trained, 2),
        }
        write_json(fdir / FOLD_DONE, marker)  # last: the fold counts as finished from here on
        decided = ("decision arg-max" if pp.thresholds is None else
                   f"threshold {format_thresholds(pp.thresholds, manifest.classes)} (chosen on validation)")
        log(progress, f"Fold {f}: {decided}, "
                      f"{len(table)} test images predicted")
    return "done"


def _train_fold(cfg: Config, manifest, train_idx, val_idx, fdir: Path, progress: bool):
    """Train (or resume, or re-read) the fold's model; returns (validation predictions, model or None)."""
    from medtl.train.trainer import train  # why: loads TensorFlow; medtl.evaluate imports without it

    if (fdir / CKPT_DIR / STATE_FILE).exists():
        res = train(cfg, manifest, train_idx, val_idx, resume=fdir, progress=progress)
    else:
        res = train(cfg, manifest, train_idx, val_idx, run_dir=fdir, progress=progress)
    return res.val_predictions, res.model


def _predict_fold(cfg: Config, fdir: Path, model, test_m):
    """Predict the test fold once with the best model: (rows used, raw scores (N, K), skipped)."""
    from medtl.data.pipeline import ImagePipeline  # why: loads TensorFlow (tf.data)
    from medtl.models.classifier import load_model  # why: loads Keras
    from medtl.run.tta import predict_dataset_views, tta_views  # why: cv2; only when a fold is predicted

    if model is None:  # a fold finished before an interruption: its saved model
        model = load_model(fdir / MODEL_FILE)
    pipe = ImagePipeline(cfg)
    used = pipe.prepare(test_m)
    ds = pipe.dataset(used, training=False)
    # predict.tta: the same views as medtl predict/evaluate, so the CV figures estimate what they give
    raw = predict_dataset_views(model, ds.map(lambda x, y: x), tta_views(cfg.predict.tta))
    if raw.shape[0] != len(used):
        raise RuntimeError(f"{fdir}: {raw.shape[0]} test predictions for {len(used)} images")
    return used, raw, [(str(p), str(r)) for p, r in pipe.skipped]


def _fold_probe(cfg: Config, manifest, train_idx: np.ndarray, used, table: pd.DataFrame, fdir: Path, f: int,
                progress: bool) -> dict | None:
    """With ``evaluate.linear_probe`` (binary tasks): fit the linear probe on the fold's training
    and validation films, add its test scores to ``table`` (``probe_score``) and its block to the
    fold's metrics.json; returns the block (None when not asked for)."""
    if not cfg.evaluate.linear_probe or cfg.task != "binary":
        return None
    from medtl.data.pipeline import ImagePipeline  # why: loads TensorFlow (tf.data)
    from medtl.evaluate.probe import PROBE_COLUMN, fold_probe, format_probe  # why: scikit-learn, Keras

    train_m = ImagePipeline(cfg).prepare(manifest.subset(train_idx))
    r = fold_probe(cfg, train_m, used)
    release_memory()
    table[PROBE_COLUMN] = r.pop("scores")
    y = table["label"].to_numpy().astype(int)
    tuned = None
    if len(np.unique(y)) == 2:
        from medtl.stats.metrics import roc_auc  # why: kept beside its one use

        tuned = float(roc_auc(y, table["score"].to_numpy(float)))
    block = {"fine_tuned_roc_auc": tuned, "probe_roc_auc": r.pop("roc_auc"), **r}
    trained = read_trainer_metrics(fdir)
    if trained:
        write_json(fdir / METRICS_FILE, {**trained, "probe": block})
    log(progress, f"Fold {f}: {format_probe(block)} (probe {block['seconds']:.0f}s)")
    return block


def release_memory() -> None:
    """Free the fold's TensorFlow graph memory before the next fold."""
    keras = sys.modules.get("keras")  # only if already loaded: importing Keras here would cost seconds
    if keras is not None:
        keras.backend.clear_session()


def _fit_postprocess(cfg: Config, manifest, val_df: pd.DataFrame, val_idx, fdir: Path, f: int,
                     tta: str = "none") -> PostProcess:
    """Threshold and calibrator from the fold's validation predictions (averaged over the ``tta``
    views, as the test fold is), and nothing else."""
    where = str(fdir / VAL_PREDICTIONS)
    allowed = set(np.asarray(manifest.paths, dtype=object)[val_idx])
    stray = sorted(set(val_df["path"]) - allowed) if "path" in val_df.columns else ["(no path column)"]
    if stray:
        raise RuntimeError(f"{where}: {len(stray)} file(s) outside fold {f}'s validation split, e.g. {stray[0]}; "
                           "refusing to choose a threshold on them")
    try:
        return save_postprocess(cfg, manifest.classes, val_df, fdir, where=where, tta=tta)
    except ValueError as exc:
        raise ValueError(f"fold {f}: {exc}") from None


def _test_table(used, f: int, raw: np.ndarray, pp: PostProcess) -> pd.DataFrame:
    """The fold's test_predictions.csv: labels, raw (and calibrated) scores, thresholds, decisions."""
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


def read_trainer_metrics(fdir: Path) -> dict:
    """The trainer's metrics.json in ``fdir`` ({} when missing or unreadable)."""
    p = fdir / METRICS_FILE
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}
