"""Run folders: their layout, safe writes, prediction tables, their metrics, and prediction
with a finished run (a cross-validation run's final model, one fold, a training run or a model
file).

A cross-validation run folder (made by :func:`medtl.evaluate.cv.run_cv`)::

    RUN/
        cv.json              marks a CV run: folds, seed, task, classes, number of images
        config.yaml          the resolved config (the run's truth; later calls must agree)
        folds.csv            file, patient, fold, label: the fold of every image, written once
        fold_<k>/            k = 0 .. folds-1, a training run folder (model.keras, ...) plus
            split.csv            file, patient, role (train / val / test), written once
            postprocess.json     threshold(s) and calibrator fitted on the validation split
            test_predictions.csv the test fold, predicted once by the best model
            fold.json            written last: the fold is finished
        oof_predictions.csv  every image once, from the fold that held it out   (merge)
        metrics.json         per fold, pooled with patient-bootstrap CIs, mean/std (merge)
        ensemble.json        how the fold models are combined for predict/evaluate (merge)
        final/               only with evaluate.final_model: retrain: a fixed-epoch training
                             run on every image (model.keras, model_info.json, config.yaml,
                             history*.csv, ckpt/), plus
            postprocess.json     the threshold (median of the fold thresholds; no calibrator)
            final.json           written last: the final model is finished

Everything is written to a temporary name and renamed, and files that several cluster jobs
may create at once (config.yaml, folds.csv, cv.json, split.csv) are created with a hard link,
which fails if another job got there first; the loser then reads the winner's file.

Example:
    >>> pred = RunPredictor("runs/demo/cv-1a2b3c4d5e")
    >>> pred.predict_paths(["new/a.dcm"])[["path", "score", "prediction"]]
"""

from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from medtl.stats.bootstrap import bootstrap_ci, bootstrap_metrics, few_patients_warning
from medtl.stats.metrics import binary_metrics, multiclass_metrics, roc_auc
from medtl.stats.postprocess import POSTPROCESS_FILE, PostProcess

__all__ = [
    "CV_FILE", "FOLDS_FILE", "SPLIT_FILE", "FOLD_DONE", "TEST_PREDICTIONS", "OOF_FILE",
    "METRICS_FILE", "ENSEMBLE_FILE", "POSTPROCESS_FILE",
    "is_cv_run", "fold_dir", "finished_folds", "read_json", "write_json", "write_csv", "create_once",
    "label_columns", "score_columns", "targets_from_frame", "scores_from_frame",
    "table_metrics", "RunPredictor", "ensemble_thresholds", "FINAL_DIR", "FINAL_DONE", "final_dir",
    "save_postprocess",
]

CV_FILE = "cv.json"
FOLDS_FILE = "folds.csv"
SPLIT_FILE = "split.csv"
FOLD_DONE = "fold.json"
TEST_PREDICTIONS = "test_predictions.csv"
OOF_FILE = "oof_predictions.csv"
METRICS_FILE = "metrics.json"
ENSEMBLE_FILE = "ensemble.json"
FINAL_DIR = "final"
FINAL_DONE = "final.json"
MODEL_FILE = "model.keras"
THRESHOLD_METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "ppv", "npv", "f1")
RANK_METRICS = ("roc_auc", "pr_auc", "brier", "ece")


# --------------------------------------------------------------------------------------------
# Layout


def is_cv_run(path: str | Path) -> bool:
    """True for a cross-validation run folder (it has cv.json)."""
    return (Path(path) / CV_FILE).is_file()


def fold_dir(run_dir: str | Path, fold: int) -> Path:
    """``RUN/fold_<k>``."""
    return Path(run_dir) / f"fold_{int(fold)}"


def final_dir(run_dir: str | Path) -> Path:
    """``RUN/final``: the model retrained on all data (``evaluate.final_model: retrain``)."""
    return Path(run_dir) / FINAL_DIR


def finished_folds(run_dir: str | Path, k: int) -> list[int]:
    """Folds of ``run_dir`` whose folder has the finished marker, in order."""
    return [f for f in range(k) if (fold_dir(run_dir, f) / FOLD_DONE).is_file()]


# --------------------------------------------------------------------------------------------
# Safe writes


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def jsonable(x: Any) -> Any:
    """``x`` with numpy types made plain and NaN/inf made None (strict JSON has no NaN)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Path):
        return str(x)
    return x


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON via a temporary file and a rename."""
    path = Path(path)
    tmp = _tmp(path)
    tmp.write_text(json.dumps(jsonable(obj), indent=2) + "\n")
    os.replace(tmp, path)
    return path


def read_json(path: str | Path) -> dict:
    """Read a JSON file, with an error naming it when it is missing or broken."""
    p = Path(path)
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{p}: not found; is this a finished medtl run folder?") from None
    except ValueError as exc:
        raise ValueError(f"{p}: not valid JSON ({exc}); the file is damaged, delete it and re-run") from None


def write_csv(path: str | Path, df: pd.DataFrame) -> Path:
    """Write a CSV via a temporary file and a rename."""
    path = Path(path)
    tmp = _tmp(path)
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path


def create_once(path: str | Path, text: str) -> bool:
    """Create ``path`` with ``text`` unless it exists; safe when several processes race.

    Returns:
        True if this call created the file, False if it already existed (keep that one).
    """
    path = Path(path)
    if path.exists():
        return False
    tmp = _tmp(path)
    tmp.write_text(text)
    try:
        os.link(tmp, path)  # atomic, and fails if another process created the file first
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Prediction tables


def label_columns(task: str, classes: Sequence[str]) -> list[str]:
    """``label`` (class index) for binary/multiclass; ``label_<name>`` per label for multilabel."""
    return [f"label_{c}" for c in classes] if task == "multilabel" else ["label"]


def score_columns(task: str, classes: Sequence[str], suffix: str = "") -> list[str]:
    """``score`` (binary) or ``score_<class>``, with ``suffix`` (e.g. ``_calibrated``)."""
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
# Metrics of a prediction table


def save_postprocess(cfg: Any, classes: Sequence[str], val_df: pd.DataFrame, out_dir: str | Path,
                     where: str | None = None) -> PostProcess:
    """Fit the decision threshold and calibrator on validation predictions and save them.

    ``evaluate.threshold`` and ``evaluate.calibration`` are fitted on ``val_df`` (the scores a
    model gave its own validation split, e.g. val_predictions.csv) and written to
    ``out_dir/postprocess.json``, which ``medtl predict`` applies; the model's
    model_info.json gets the raw-score threshold, for callers of the bare model file.

    Raises:
        ValueError: the validation predictions cannot support the rule (e.g. one class only).
    """
    out = Path(out_dir)
    where = where or str(out / "val_predictions.csv")
    y = targets_from_frame(val_df, cfg.task, classes, where=where)
    s = scores_from_frame(val_df, cfg.task, classes, where=where)
    pp = PostProcess.fit(cfg.task, list(classes), y, s, cfg.evaluate.threshold, cfg.evaluate.calibration)
    write_json(out / POSTPROCESS_FILE, pp.to_dict())
    if pp.raw_thresholds is not None and (out / "model_info.json").exists():
        from medtl.train.predict import set_threshold

        # The model alone sees raw scores, so it gets the raw-scale threshold.
        t = pp.raw_thresholds[0] if cfg.task == "binary" else pp.raw_thresholds
        set_threshold(out, t, rule=f"{cfg.evaluate.threshold} on the validation split (uncalibrated scores)")
    return pp


def _binary_table(y: np.ndarray, s: np.ndarray, t: np.ndarray, groups: Any, n_boot: int, seed: int,
                  alpha: float = 0.05) -> tuple[dict, dict]:
    """Binary metrics where each row carries its own threshold (a pooled table of folds).

    Ranking and calibration metrics come from the scores; threshold metrics from the decisions
    ``s >= t`` of each row's own model. Both bootstraps use the same seed and patients, hence the
    same replicates.
    """
    y = y.astype(np.int8)
    dec = (s >= t).astype(np.float64)
    rank = binary_metrics(y, s, threshold=0.5)
    thr = binary_metrics(y, dec, threshold=0.5)
    out: dict[str, Any] = {k: rank[k] for k in ("roc_auc", "pr_auc")}
    out.update({k: thr[k] for k in THRESHOLD_METRICS})
    out.update({k: rank[k] for k in ("brier", "ece")})
    ts = np.unique(t)
    out["threshold"] = float(ts[0]) if ts.size == 1 else None
    out.update({k: thr[k] for k in ("n", "n_pos", "tp", "fp", "tn", "fn")})
    ci: dict[str, Any] = {}
    if n_boot > 0:
        a = bootstrap_metrics(y, s, groups, 0.5, RANK_METRICS, n_boot=n_boot, alpha=alpha, seed=seed)
        b = bootstrap_metrics(y, dec, groups, 0.5, THRESHOLD_METRICS, n_boot=n_boot, alpha=alpha, seed=seed)
        ci = {k: v.to_dict() for k, v in {**a, **b}.items()}
    return out, ci


def table_metrics(task: str, classes: Sequence[str], y: np.ndarray, s: np.ndarray,
                  thresholds: np.ndarray | None, groups: Any, n_boot: int = 1000, seed: int = 0,
                  alpha: float = 0.05) -> tuple[dict, dict]:
    """Metrics and patient-bootstrap intervals of a prediction table.

    Args:
        task, classes: as in the config.
        y: targets (N, K).
        s: decision-scale scores (N, K) in [0, 1].
        thresholds: (N, K) threshold of each row and column (rows of different folds may
            differ), or None for multiclass.
        groups: patient id per row (the bootstrap resamples patients).
        n_boot: bootstrap replicates; 0 skips the intervals.
        seed: bootstrap seed.

    Returns:
        (metrics, intervals). Binary: the :data:`~medtl.stats.metrics.BINARY_METRICS` plus
        counts, and an interval per metric. Multilabel: ``per_label`` {name: binary metrics},
        ``macro``, ``exact_match``, intervals per label and for macro ROC AUC. Multiclass: as
        :func:`~medtl.stats.metrics.multiclass_metrics`, with intervals for macro ROC AUC,
        accuracy and balanced accuracy.
    """
    n_patients = int(pd.Series(np.asarray(groups, dtype=object)).nunique())
    if task == "binary":
        m, ci = _binary_table(y[:, 0], s[:, 0], thresholds[:, 0], groups, n_boot, seed, alpha)
        m["n_patients"] = n_patients
        return m, ci
    if task == "multilabel":
        per, cis = {}, {}
        for j, name in enumerate(classes):
            per[name], cis[name] = _binary_table(y[:, j], s[:, j], thresholds[:, j], groups, n_boot,
                                                 seed, alpha)
        keys = ("roc_auc", "pr_auc", *THRESHOLD_METRICS, "brier", "ece")
        macro = {k: float(np.mean([np.nan if per[c][k] is None else per[c][k] for c in classes])) for k in keys}
        hits = (s >= thresholds) == (y == 1)
        m = {"per_label": per, "macro": macro, "exact_match": float(np.mean(hits.all(axis=1))),
             "n": int(y.shape[0]), "n_patients": n_patients}
        ci: dict[str, Any] = {"per_label": cis}
        if n_boot > 0:
            def macro_auc(yy: np.ndarray, ss: np.ndarray) -> float:
                return float(np.mean([roc_auc(yy[:, j], ss[:, j]) for j in range(yy.shape[1])]))

            try:  # the labels are resampled together: one patient draw for all of them
                ci["macro_roc_auc"] = bootstrap_ci(y, s, macro_auc, groups, n_boot=n_boot, alpha=alpha,
                                                   seed=seed).to_dict()
            except ValueError:  # a label with one class: no macro AUC to bound
                pass
        return m, ci
    yi = y.argmax(axis=1)
    m = multiclass_metrics(yi, s, list(classes))
    m["n_patients"] = n_patients
    ci = {}
    if n_boot > 0:
        fns = {
            "macro_roc_auc": lambda a, b: multiclass_metrics(a, b, list(classes))["macro"]["roc_auc"],
            "accuracy": lambda a, b: float(np.mean(a == b.argmax(axis=1))),
            "balanced_accuracy": lambda a, b: multiclass_metrics(a, b, list(classes))["balanced_accuracy"],
        }
        ci = {k: bootstrap_ci(yi, s, f, groups, n_boot=n_boot, alpha=alpha, seed=seed).to_dict()
              for k, f in fns.items()}
    return m, ci


def interval_warning(task: str, classes: Sequence[str], y: np.ndarray, groups: Any) -> str | None:
    """:func:`~medtl.stats.bootstrap.few_patients_warning` for a prediction table's targets
    (``y`` as from :func:`targets_from_frame`)."""
    if task == "binary":
        names = list(classes) if len(classes) == 2 else ["negative", "positive"]
        return few_patients_warning(y[:, 0], groups, names)
    return few_patients_warning(y, groups, list(classes))


# --------------------------------------------------------------------------------------------
# Prediction with a finished run


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


class RunPredictor:
    """Scores images with a finished run: a CV run (its final model), one fold folder, a
    training run folder, or a ``.keras`` file with ``model_info.json`` beside it.

    A CV run's final model is, by default, the ensemble of its fold models: each model's score
    is calibrated with its fold's calibrator (if any), the ensemble score is the mean over folds
    and its threshold :func:`ensemble_thresholds`. With ``evaluate.final_model: retrain`` it is
    the one model in ``RUN/final`` with the threshold saved there. Without a saved
    ``postprocess.json`` (a plain training run) the model_info threshold is used, or 0.5.

    Attributes:
        task, classes: of the models.
        thresholds: decision threshold per score column (None for multiclass).
        threshold_source: where the threshold came from.
        members: the model folders/files used.

    Example:
        >>> p = RunPredictor("runs/demo/cv-1a2b3c4d5e")
        >>> p.predict_paths(["a.dcm", "b.png"]).prediction.tolist()
        ['lesion', 'normal']
    """

    def __init__(self, run_or_model: str | Path) -> None:
        from medtl.train.predict import read_model_info

        p = Path(run_or_model)
        if not p.exists():
            raise FileNotFoundError(f"{p}: not found; pass a medtl run folder (CV or training) or a .keras file")
        self.path = p
        if is_cv_run(p) and read_json(p / CV_FILE).get("final_model", "ensemble") == "retrain":
            self._use_final(p)
        elif is_cv_run(p):
            cv = read_json(p / CV_FILE)
            done = finished_folds(p, int(cv["folds"]))
            if not done:
                raise FileNotFoundError(f"{p}: no finished fold yet; run medtl cv first")
            self.members = [fold_dir(p, f) for f in done]
            self.folds = done
            self.pps: list[PostProcess | None] = [
                PostProcess.from_dict(read_json(m / POSTPROCESS_FILE)) for m in self.members]
            self.thresholds = ensemble_thresholds(self.pps)  # type: ignore[arg-type]
            rule = self.pps[0].rule  # type: ignore[union-attr]
            self.threshold_source = (f"median of the validation-chosen ({rule}) thresholds of folds "
                                     f"{', '.join(map(str, done))}" if self.thresholds is not None
                                     else "arg-max (multiclass)")
            if len(done) < int(cv["folds"]):
                self.threshold_source += f" (only {len(done)} of {cv['folds']} folds finished)"
        else:
            folder = p if p.is_dir() else p.parent
            self.members = [p]
            self.folds = []
            pp_file = folder / POSTPROCESS_FILE
            info = read_model_info(p)
            if pp_file.is_file():
                pp = PostProcess.from_dict(read_json(pp_file))
                self.pps = [pp]
                self.thresholds = pp.thresholds
                self.threshold_source = f"chosen on the validation split ({pp.rule}), {pp_file}"
            else:
                self.pps = [None]
                t = info.get("threshold")
                if info["task"] == "multiclass":
                    self.thresholds = None
                    self.threshold_source = "arg-max (multiclass)"
                elif t is None:
                    self.thresholds = [0.5] * (1 if info["task"] == "binary" else len(info["classes"]))
                    self.threshold_source = "0.5 (no threshold saved with the model)"
                else:
                    k = 1 if info["task"] == "binary" else len(info["classes"])
                    self.thresholds = [float(v) for v in np.broadcast_to(np.asarray(t, dtype=float), (k,))]
                    self.threshold_source = f"model_info.json ({info.get('threshold_rule') or 'saved'})"
        infos = [read_model_info(m) for m in self.members]
        first = infos[0]
        for m, info in zip(self.members[1:], infos[1:]):
            if info["preprocessing"] != first["preprocessing"] or info["classes"] != first["classes"]:
                raise ValueError(f"{m}: preprocessing or classes differ from {self.members[0]}; "
                                 "the folds of one run must share them")
        self.info = first
        self.task: str = first["task"]
        self.classes: list[str] = list(first["classes"])
        self._models: list | None = None

    def _use_final(self, run: Path) -> None:
        """The retrained final model of a CV run (``evaluate.final_model: retrain``)."""
        fin = final_dir(run)
        if not (fin / FINAL_DONE).is_file():
            raise FileNotFoundError(
                f"{run}: evaluate.final_model is retrain and the final model in {fin} is not finished yet "
                f"({FINAL_DONE} missing); run `medtl cv CONFIG --run {run}` with the config it was started "
                f"with ({run / 'config.yaml'}) to finish the folds and retrain it")
        pp = PostProcess.from_dict(read_json(fin / POSTPROCESS_FILE))
        self.members, self.folds, self.pps = [fin], [], [pp]
        self.thresholds = pp.thresholds
        rule = pp.extra.get("threshold_rule") or ("arg-max (multiclass)" if pp.thresholds is None else pp.rule)
        self.threshold_source = f"{rule}; final model retrained on all data, {fin}"

    # ----------------------------------------------------------------------------------------

    def _load(self) -> list:
        if self._models is None:
            # medtl's loader: it registers medtl's layers, which a fresh `medtl predict` has not imported
            from medtl.models.classifier import load_model

            paths = [m / MODEL_FILE if m.is_dir() else m for m in self.members]
            for mp in paths:
                if not mp.is_file():
                    raise FileNotFoundError(f"{mp}: model file missing; the run folder is incomplete")
            self._models = [load_model(mp) for mp in paths]
        return self._models

    def models(self) -> list:
        """The member models, loaded once (medtl's loader, so medtl's layers are registered)."""
        return self._load()

    def pipeline_config(self, like=None):
        """A Config reproducing the training-time preprocessing (cache/workers/on_error from ``like``)."""
        from medtl.train.predict import pipeline_config

        cfg = pipeline_config(self.info)
        if like is not None:
            cfg.data.cache_dir = like.data.cache_dir
            cfg.data.workers = like.data.workers
            cfg.data.on_error = like.data.on_error
        return cfg

    def combine(self, raw: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """(ensemble decision-scale scores, per-member decision-scale scores) from raw scores."""
        members = [pp.calibrate(r) if pp is not None else np.asarray(r, dtype=np.float64)
                   for pp, r in zip(self.pps, raw)]
        return np.mean(members, axis=0), members

    def decide(self, s: np.ndarray) -> np.ndarray:
        """Decisions for decision-scale scores: (N, K) 0/1, or (N,) class index for multiclass."""
        if self.task == "multiclass":
            return s.argmax(axis=1)
        return (s >= np.asarray(self.thresholds)[None, :]).astype(np.int8)

    def raw_scores(self, x: np.ndarray) -> list[np.ndarray]:
        """Each member model's raw scores (N, K) for a batch of model inputs (N, H, W, 1)."""
        return [np.asarray(m.predict_on_batch(x), dtype=np.float64) for m in self._load()]

    def predict_dataset(self, ds) -> list[np.ndarray]:
        """Each member model's raw scores (N, K) over a ``tf.data`` dataset of (x, y)."""
        xs = ds.map(lambda x, y: x)
        return [np.asarray(m.predict(xs, verbose=0), dtype=np.float64) for m in self._load()]

    def labels(self, decisions: np.ndarray) -> list[str]:
        """Readable prediction per row: class name (binary, multiclass) or ';'-joined labels."""
        if self.task == "multiclass":
            return [self.classes[int(i)] for i in decisions]
        if self.task == "binary":
            return [self.classes[int(d)] for d in decisions[:, 0]]
        return [";".join(c for c, v in zip(self.classes, row) if v) for row in decisions]

    def predict_paths(self, paths: Sequence[str | Path], batch_size: int = 16) -> pd.DataFrame:
        """One row per path, in order: ``path``, score column(s) on the decision scale,
        ``score_fold<k>`` for an ensemble, ``prediction`` and ``error`` (unreadable files get a
        reason and no scores).
        """
        from medtl.data.pipeline import ImagePipeline

        pipe = ImagePipeline(self.pipeline_config())
        cols = score_columns(self.task, self.classes)
        rows: list[dict] = [{"path": str(p), "error": ""} for p in paths]
        ok: list[int] = []
        batch: list[np.ndarray] = []

        def flush() -> None:
            idx = ok[len(ok) - len(batch):]
            x = np.stack(batch)
            if len(x) < batch_size:
                # Pad the last batch: one input shape means one traced predict function per model.
                x = np.concatenate([x, np.zeros((batch_size - len(x), *x.shape[1:]), x.dtype)])
            s, members = self.combine([r[:len(batch)] for r in self.raw_scores(x)])
            labels = self.labels(self.decide(s))
            for r, i in enumerate(idx):
                rows[i].update(zip(cols, s[r].tolist()))
                if len(self.members) > 1:
                    for f, ms in zip(self.folds, members):
                        rows[i].update({f"{c}_fold{f}": v for c, v in zip(cols, ms[r].tolist())})
                rows[i]["prediction"] = labels[r]
            batch.clear()

        for i, p in enumerate(paths):
            try:
                x, _ = pipe.load(str(p))
            except Exception as exc:  # noqa: BLE001 - every failure becomes a listed error row
                rows[i]["error"] = str(exc).strip().replace("\n", " ") or type(exc).__name__
                continue
            ok.append(i)
            batch.append(np.asarray(x, dtype=np.float32))
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
        extra = [f"{c}_fold{f}" for f in self.folds for c in cols] if len(self.members) > 1 else []
        df = pd.DataFrame(rows, columns=["path", *cols, *extra, "prediction", "error"])
        df["prediction"] = df["prediction"].fillna("")
        return df
