"""Scoring finished runs: on an external test set (``medtl evaluate``) and against each other
(``medtl compare``).

An external test applies what the run saved, unchanged: the training-time preprocessing, the
fold calibrators and the threshold chosen on validation data (for a CV run, the ensemble of
the fold models with the median fold threshold; see :class:`medtl.run.predictor.Predictor`).
Nothing is re-fitted on the external data.

Example:
    >>> from medtl.evaluate.external import evaluate_external, compare_runs
    >>> m = evaluate_external("runs/demo/cv-1a2b3c4d5e", "other_site/labels.csv", "eval/site2")
    >>> m["roc_auc"], m["roc_auc_ci"], m["sensitivity"]
    >>> r = compare_runs("runs/a/cv-1", "runs/b/cv-2")
    >>> r["diff"], r["delong"]["p_value"]
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medtl.config import Config, ConfigError, config_from_dict, load_config, load_resolved
from medtl.data.manifest import load_manifest, read_csv_table
from medtl.stats.bootstrap import bootstrap_ci, bootstrap_paired_difference
from medtl.stats.compare import delong_test
from medtl.stats.metrics import roc_auc
from medtl.evaluate.formatting import format_compare, format_external
from medtl.evaluate.pooling import merge_cv
from medtl.evaluate.tables import interval_warning, table_metrics
from medtl.io.atomic import jsonable, read_json, write_csv, write_json
from medtl.run.files import decision_suffix, label_columns, score_columns, scores_from_frame, targets_from_frame
from medtl.run.layout import (
    CONFIG_FILE, CV_FILE, FOLD_DONE, METRICS_FILE, OOF_FILE, PREDICTIONS_FILE, SITE_POSTPROCESS_FILE, SKIPPED_FILE,
    fold_dir, is_cv_run,
)
from medtl.run.predictor import Predictor, with_ood_columns
from medtl.stats.recalibrate import Recalibration, recalibrate_site
from medtl.stats.selective import selective_summary
from medtl.stats.shift import ShiftResult, shift_warning

# format_external and format_compare live with the other console text; re-exported here, where
# callers have always found them.
__all__ = ["evaluate_external", "format_external", "compare_runs", "format_compare", "EXTERNAL_KEYS"]

EXTERNAL_KEYS = ("roc_auc", "roc_auc_ci", "pr_auc", "accuracy", "balanced_accuracy", "sensitivity",
                 "specificity", "ppv", "npv", "f1", "brier", "ece", "threshold", "n", "n_patients", "task",
                 "classes", "warnings", "labelled", "shift", "score_distribution", "recalibration", "selective",
                 "intervals")
"""The keys of ``DIR/metrics.json`` written by :func:`evaluate_external`, in order."""

INTERVAL_METRICS = ("roc_auc", "pr_auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "ppv",
                    "npv", "f1", "brier", "ece")
"""The metrics whose 95% patient-bootstrap intervals go to ``intervals`` in metrics.json (those the
task's tables bound: all for binary; fewer for multiclass and multilabel)."""

RECALIBRATION_METRICS = ("roc_auc", "balanced_accuracy", "sensitivity", "specificity", "ppv", "npv", "f1",
                         "accuracy", "brier", "ece")
"""The figures given before and after a local recalibration (``recalibration`` in metrics.json)."""

# --------------------------------------------------------------------------------------------
# External test


def evaluate_external(run_or_model: str | Path, data_manifest_or_config: str | Path | Config,
                      out_dir: str | Path, progress: bool = True, tta: str | None = None,
                      recalibrate: int | None = None, site_calibration: str = "none",
                      site_out: str | Path | None = None) -> dict[str, Any]:
    """Score a finished run or model on another labelled dataset.

    Args:
        run_or_model: a CV run folder (the fold models as an ensemble), a fold or training run
            folder, or a ``.keras`` file with model_info.json beside it.
        data_manifest_or_config: a YAML config whose ``data`` section describes the external
            set, a :class:`~medtl.config.Config`, or a labels CSV / class-folder tree read with
            the run's own ``data.*`` column settings.
        out_dir: where ``metrics.json`` and ``predictions.csv`` go (created).
        progress: print what is scored and any skipped files.
        tta: test-time augmentation (``predict.tta``: none, flip, shift, flip+shift); None:
            the run's own ``predict.tta``. Raw scores are averaged over the views before the
            saved calibrators and threshold (:mod:`medtl.run.tta`).
        recalibrate: K: refit the run's threshold rule (and ``site_calibration``) on the films
            of K local patients (drawn stratified by having a positive film, seeded with the
            run's seed; :func:`medtl.stats.recalibrate.recalibrate_site`), and give the other
            patients' metrics before (the run's threshold) and after (the site's). None: no
            refit, the run's post-processing unchanged.
        site_calibration: none, platt or temperature: a calibrator fitted with ``recalibrate``
            on the run's output scores.
        site_out: where the site post-processing goes (default ``out_dir/site_postprocess.json``);
            ``medtl predict RUN FILES --site FILE`` applies it.

    Returns:
        The metrics, with exactly the keys in :data:`EXTERNAL_KEYS` (``roc_auc_ci`` is the 95%
        patient-bootstrap interval [low, high]). For multiclass and multilabel the values are
        macro averages, and per-class figures go to ``DIR/per_class.json``. ``shift``: how
        unlike the training films these films are (domain AUC with interval, share of films
        out of distribution, n; :mod:`medtl.stats.shift`), None for runs without a feature
        summary; its one-line warning, if any, is in ``warnings`` and predictions.csv gets
        ``ood_percentile`` and ``ood`` (and, for an ensemble or with ``tta``, ``spread`` and
        ``uncertain``: a fold model or a test-time view decides otherwise than the decision
        given; :meth:`~medtl.run.predictor.Predictor.with_uncertain`). ``score_distribution``: quantiles of each score
        column. A CSV without the label column(s) (``labelled`` False) gets no label metrics
        (None), only these. ``recalibration`` (None without ``recalibrate``): ``k``,
        ``n_fit`` / ``n_held_out`` (films), ``n_patients_held_out``, ``site_file``,
        ``threshold_before`` / ``threshold_after``, and ``before`` / ``after``: the
        :data:`RECALIBRATION_METRICS` of the held-out patients with ``<name>_ci``
        patient-bootstrap intervals (macro values for multilabel, interval for ROC AUC only);
        predictions.csv then gains ``recalibration`` (fit / held_out), ``site_<score column>``
        and ``site_prediction`` columns. ``selective`` (labelled binary data, else None):
        accuracy and balanced accuracy with 100/90/80% of films kept, the least confident
        (``|logit(score) - logit(threshold)|``) referred first, at the run's threshold
        (:func:`medtl.stats.selective.selective_summary`, as ``medtl cv`` gives for its
        out-of-fold films). ``intervals``: metric -> [low, high] 95% patient-bootstrap interval
        of each of :data:`INTERVAL_METRICS` the task bounds (multiclass: ROC AUC, accuracy and
        balanced accuracy; multilabel: the macro ROC AUC only, per-label intervals are in
        per_class.json; {} for unlabelled data or ``evaluate.bootstrap: 0``).

    Raises:
        ConfigError: the dataset's task or classes differ from the model's, or no config can
            describe the dataset's columns.
        ValueError: ``recalibrate`` on unlabelled or multiclass data, K leaving fewer than 10
            patients held out, or K patients lacking a class.
        DataError: unreadable files under ``data.on_error: fail``.

    Example:
        >>> m = evaluate_external("runs/demo/cv-1a2b3c4d5e", "site2/labels.csv", "eval/site2")
        >>> sorted(m) == sorted(EXTERNAL_KEYS)
        True
    """
    pred = Predictor(run_or_model, tta=tta)
    cfg = _data_config(run_or_model, data_manifest_or_config)
    if cfg.task != pred.task:
        raise ConfigError(f"task: the data config says {cfg.task!r} but {run_or_model} was trained for "
                          f"{pred.task!r}; evaluate with a config of the same task")
    cfg, labelled = _unlabelled_ok(cfg)
    manifest = load_manifest(cfg, labels=labelled)
    if not labelled:
        manifest.classes = list(pred.classes)  # no labels to read classes from: the model's
    if list(manifest.classes) != list(pred.classes):
        raise ConfigError(f"data.classes: the external set has classes {manifest.classes} but the model "
                          f"{run_or_model} has {pred.classes}; set data.classes to the model's, in that order")
    if recalibrate is not None and (not labelled or pred.task == "multiclass"):
        what = (f"{Path(cfg.data.manifest).name} has no label column to refit on" if not labelled
                else f"{run_or_model} is multiclass (arg-max, no threshold)")
        raise ValueError(f"--recalibrate {recalibrate}: {what}; drop --recalibrate or use labelled films of a "
                         "binary or multilabel run")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if progress:
        views = "" if pred.tta == "none" else f", test-time augmentation {pred.tta}"
        print(f"Scoring {len(manifest)} images with {len(pred.members)} model(s) from {run_or_model}{views}", flush=True)
    scored = _score(pred, cfg, manifest)
    used, raw, skipped = scored[:3]
    features = scored[3] if len(scored) > 3 else None  # stand-in scorers (tests) may give none
    if skipped:
        write_csv(out / SKIPPED_FILE, pd.DataFrame(skipped, columns=["path", "reason"]))
        msg = (f"{len(skipped)} unreadable file(s) left out of the evaluation (data.on_error: skip); "
               f"listed in {out / 'skipped.csv'}")
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        if progress:
            print(msg, flush=True)
    s, members = pred.combine(raw)
    groups = used.df["patient_id"].astype(str).to_numpy(dtype=object)
    shift = _shift(pred, features, groups, cfg.seed)
    recal = None
    if recalibrate is not None:
        recal = recalibrate_site(pred.task, pred.classes, used.targets(), s, groups, int(recalibrate),
                                 rule=_run_rule(pred, cfg), calibration=site_calibration, seed=cfg.seed)
        recal.site.extra["site"]["run"] = str(run_or_model)
        site_path = Path(site_out) if site_out is not None else out / SITE_POSTPROCESS_FILE
        site_path.parent.mkdir(parents=True, exist_ok=True)
        write_json(site_path, recal.site.to_dict())
    table = with_ood_columns(_prediction_table(used, s, members, pred, labelled), shift,
                             ok=np.ones(len(used), bool))
    if recal is not None:
        table = _with_site_columns(table, recal, s, pred)
    table = pred.with_uncertain(table, raw)  # spread, uncertain: the fold models or the test-time views disagree
    write_csv(out / PREDICTIONS_FILE, table)
    extra = {"labelled": labelled, "shift": None if shift is None else shift.as_dict(),
             "score_distribution": score_distribution(s, score_columns(pred.task, pred.classes), pred.thresholds)}
    shift_line = None if shift is None else shift_warning(shift)
    if shift is not None and not shift.reliable:
        shift_line = None
        extra["shift"]["note"] = "; ".join(shift.notes)
    if not labelled:
        flat = {"threshold": None if pred.thresholds is None else
                (pred.thresholds[0] if pred.task == "binary" else list(pred.thresholds)),
                "n": int(len(used)), "n_patients": int(pd.Series(groups).nunique()), "task": pred.task,
                "classes": list(pred.classes), "roc_auc_ci": [None, None], "intervals": {},
                "warnings": [f"no label column {cfg.data.label_column!r} in {Path(cfg.data.manifest).name}: label "
                             "metrics were not computed; shift figures and the score distribution are given "
                             "instead"] + ([shift_line] if shift_line else []), **extra}
        result = {k: flat.get(k) for k in EXTERNAL_KEYS}
        write_json(out / METRICS_FILE, result)
        return jsonable(result)
    y = used.targets().astype(np.float64)

    t = None if pred.thresholds is None else np.tile(np.asarray(pred.thresholds, dtype=np.float64), (len(used), 1))
    m, ci = table_metrics(pred.task, pred.classes, y, s, t, groups, n_boot=cfg.evaluate.bootstrap, seed=cfg.seed)
    if pred.task == "binary":
        flat = {k: m[k] for k in EXTERNAL_KEYS if k in m}
        roc_ci = ci.get("roc_auc", {})
        flat["threshold"] = pred.thresholds[0]
    else:
        macro = m["macro"]
        flat = {k: macro.get(k, m.get(k)) for k in EXTERNAL_KEYS if k in macro or k in m}
        roc_ci = ci.get("macro_roc_auc", {})
        flat["threshold"] = None if pred.task == "multiclass" else list(pred.thresholds)
        write_json(out / "per_class.json", {"metrics": m, "intervals": ci, "threshold_source": pred.threshold_source})
    flat["roc_auc_ci"] = [roc_ci.get("low"), roc_ci.get("high")]
    flat["intervals"] = {k: [ci[k].get("low"), ci[k].get("high")] for k in INTERVAL_METRICS
                         if pred.task != "multilabel" and isinstance(ci.get(k), dict)}
    if pred.task != "binary" and roc_ci:  # the macro ROC AUC's interval, under its flat name
        flat["intervals"] = {"roc_auc": flat["roc_auc_ci"], **flat["intervals"]}
    if pred.task == "binary":  # films to refer: accuracy when the least confident 10% / 20% are referred
        flat["selective"] = selective_summary(y[:, 0], s[:, 0], pred.thresholds[0])
    flat["n"] = int(len(used))
    flat["n_patients"] = int(pd.Series(groups).nunique())
    flat["task"], flat["classes"] = pred.task, list(pred.classes)
    few = interval_warning(pred.task, pred.classes, y, groups)
    flat["warnings"] = [w for w in (few, shift_line) if w]
    flat.update(extra)
    if recal is not None:
        flat["recalibration"] = _recalibration(pred, recal, y, s, groups, cfg, site_path)
    result = {k: flat.get(k) for k in EXTERNAL_KEYS}
    write_json(out / METRICS_FILE, result)
    return jsonable(result)


def _score(pred: Predictor, cfg: Config, manifest):
    """Decode the external set with the training-time preprocessing and run every member model:
    (rows scored, raw scores per member, skipped (path, reason), the first member's pooled
    features or None when the run kept no feature summary to compare them with)."""
    from medtl.data.pipeline import ImagePipeline  # why: loads TensorFlow (tf.data)

    pipe = ImagePipeline(pred.pipeline_config(like=cfg))
    used = pipe.prepare(manifest)
    ds = pipe.dataset(used, training=False)
    skipped = [(str(p), str(r)) for p, r in pipe.skipped]
    if pred.feature_summary() is None:
        return used, pred.predict_dataset(ds), skipped, None
    raw, feats = pred.predict_dataset_with_features(ds)
    return used, raw, skipped, feats


def _run_rule(pred: Predictor, cfg: Config) -> str:
    """The run's threshold rule: its saved post-processing's, else the config's ``evaluate.threshold``."""
    pp = next((p for p in pred.pps if p is not None), None)
    return pp.rule if pp is not None and pp.rule else cfg.evaluate.threshold


def _with_site_columns(table: pd.DataFrame, recal: Recalibration, s: np.ndarray, pred: Predictor) -> pd.DataFrame:
    """``table`` with which films the site was fitted on, their site scores and decisions."""
    out = table.copy()
    out["recalibration"] = np.where(recal.fit, "fit", "held_out")
    cal = recal.site.calibrate(s)
    for j, col in enumerate(score_columns(pred.task, pred.classes)):
        out[f"site_{col}"] = cal[:, j]
    dec = recal.site.decide(cal)
    if pred.task == "multilabel":
        for j, name in enumerate(pred.classes):
            out[f"site_prediction_{name}"] = dec[:, j]
    else:
        out["site_prediction"] = dec[:, 0]
    return out


def _recalibration(pred: Predictor, recal: Recalibration, y: np.ndarray, s: np.ndarray, groups: np.ndarray,
                   cfg: Config, site_path: Path) -> dict[str, Any]:
    """Metrics of the held-out patients with the run's post-processing and with the site's,
    on the same bootstrap replicates (same seed and patients)."""
    h = recal.held_out
    yh, gh, sh = y[h], groups[h], s[h]
    sides = {"before": (sh, pred.thresholds), "after": (recal.site.calibrate(sh), recal.site.thresholds)}
    res: dict[str, Any] = {"k": recal.k, "n_fit": int(recal.fit.sum()), "n_held_out": int(h.sum()),
                           "n_patients_held_out": int(pd.Series(gh).nunique()), "site_file": str(site_path),
                           "calibration": recal.site.calibration, "rule": recal.site.rule}
    for side, (ss, thr) in sides.items():
        t = np.tile(np.asarray(thr, dtype=np.float64), (len(ss), 1))
        m, ci = table_metrics(pred.task, pred.classes, yh, ss, t, gh, n_boot=cfg.evaluate.bootstrap, seed=cfg.seed)
        if pred.task == "multilabel":
            vals, ci = m["macro"], {"roc_auc": ci.get("macro_roc_auc", {})}
        else:
            vals = m
        d: dict[str, Any] = {}
        for k in RECALIBRATION_METRICS:
            d[k] = vals.get(k)
            c = ci.get(k) or {}
            d[f"{k}_ci"] = [c.get("low"), c.get("high")]
        res[side] = d
        res[f"threshold_{side}"] = thr[0] if pred.task == "binary" else list(thr)
    return res


def _shift(pred: Predictor, features: np.ndarray | None, groups: np.ndarray, seed: int) -> ShiftResult | None:
    """The shift of the scored films from the training films, or None (no summary/features)."""
    if features is None:
        return None
    return pred.shift(features, groups=groups, seed=seed)


def score_distribution(s: np.ndarray, cols: list[str], thresholds: list[float] | None) -> dict[str, dict]:
    """Quantiles (5, 25, 50, 75, 95%), mean and, with thresholds, the share at or above the
    threshold, of each score column: what unlabelled films can still be described by.

    Example:
        >>> score_distribution(np.array([[0.1], [0.9]]), ["score"], [0.5])["score"]["share_positive"]
        0.5
    """
    out: dict[str, dict] = {}
    for j, col in enumerate(cols):
        v = np.asarray(s[:, j], dtype=np.float64)
        if not len(v):
            out[col] = {}
            continue
        q = np.quantile(v, [0.05, 0.25, 0.5, 0.75, 0.95])
        d = {f"q{int(round(p * 100)):02d}": float(x) for p, x in zip((0.05, 0.25, 0.5, 0.75, 0.95), q)}
        d["mean"] = float(v.mean())
        if thresholds is not None:
            d["share_positive"] = float((v >= thresholds[j]).mean())
        out[col] = d
    return out


def _unlabelled_ok(cfg: Config) -> tuple[Config, bool]:
    """(config, labelled): a CSV without the label column(s) is read unlabelled, and, if it
    lacks the patient column too, with each film as its own patient."""
    src = Path(cfg.data.manifest)
    if src.is_dir() or not src.is_file() or src.suffix.lower() in (".yaml", ".yml"):
        return cfg, True
    cols = [str(c) for c in read_csv_table(src, nrows=0).columns]
    d = cfg.data
    wanted = d.label_column if isinstance(d.label_column, list) else [d.label_column]
    if all(c in cols for c in wanted) or d.path_column not in cols:
        return cfg, True  # labelled (or a broken CSV whose error load_manifest words best)
    pc = d.patient_column
    if pc and not pc.startswith("dicom:") and pc.lower() != "none" and pc not in cols:
        raw = cfg.to_dict()
        raw["data"]["patient_column"] = "none"
        cfg = config_from_dict(raw)
    return cfg, False


def _data_config(run_or_model: str | Path, data: str | Path | Config) -> Config:
    """The config describing the external set (see :func:`evaluate_external`)."""
    if isinstance(data, Config):
        return data
    p = Path(data)
    if p.suffix.lower() in (".yaml", ".yml"):
        return load_config(p)
    if not p.exists():
        raise FileNotFoundError(f"{p}: not found; pass a labels CSV, a folder with one sub-folder per class, "
                                "or a YAML config")
    run = Path(run_or_model)
    folder = run if run.is_dir() else run.parent
    saved = folder / CONFIG_FILE
    if not saved.is_file() and is_cv_run(folder.parent):
        saved = folder.parent / CONFIG_FILE  # a fold folder of a CV run
    if not saved.is_file():
        raise ConfigError(f"{folder}: no config.yaml to read the columns of {p} with; pass a YAML config whose "
                          "data section describes the external set")
    raw = load_resolved(saved).to_dict()
    raw["data"]["manifest"] = str(p.resolve())
    raw["data"]["root"] = None
    return config_from_dict(raw)


def _prediction_table(used, s: np.ndarray, members: list[np.ndarray], pred: Predictor,
                      labelled: bool = True) -> pd.DataFrame:
    task, classes = pred.task, pred.classes
    df = used.df
    out = pd.DataFrame({"file": df["path"].astype(str), "patient": df["patient_id"].astype(str)})
    if not labelled:
        pass  # no label columns: there are no labels
    elif task == "multilabel":
        for name, col in zip(classes, used.label_columns or classes):
            out[f"label_{name}"] = df[col].to_numpy()
    else:
        out["label"] = df["label"].to_numpy()
    cols = score_columns(task, classes)
    for j, col in enumerate(cols):
        out[col] = s[:, j]
    dec = pred.decide(s)
    if task == "multilabel":
        for j, name in enumerate(classes):
            out[f"prediction_{name}"] = dec[:, j]
    else:
        out["prediction"] = dec[:, 0] if dec.ndim == 2 else dec
    if len(members) > 1:
        for f, ms in zip(pred.folds, members):
            for j, col in enumerate(cols):
                out[f"{col}_fold{f}"] = ms[:, j]
    return out


# --------------------------------------------------------------------------------------------
# Comparing two runs


def _scores_of(run: str | Path) -> tuple[pd.DataFrame, str, list[str], str, int, int]:
    """(table with file, patient, label column(s), score column(s) under their plain names;
    task; classes; score columns used; n_boot; seed) of a run."""
    p = Path(run)
    if is_cv_run(p):
        cv = read_json(p / CV_FILE)
        oof = p / OOF_FILE
        markers = [fold_dir(p, f) / FOLD_DONE for f in range(int(cv["folds"]))]
        newest = max((m.stat().st_mtime for m in markers if m.exists()), default=0.0)
        if not oof.exists() or oof.stat().st_mtime < newest:
            merge_cv(p)  # pool the folds finished since the last merge
        df = pd.read_csv(oof, dtype={"file": str, "patient": str})
        task, classes = cv["task"], list(cv["classes"])
        cfg = load_resolved(p / CONFIG_FILE)
        n_boot, seed = cfg.evaluate.bootstrap, cfg.seed
    elif (p / METRICS_FILE).is_file() and (p / PREDICTIONS_FILE).is_file():
        df = pd.read_csv(p / PREDICTIONS_FILE, dtype={"file": str, "patient": str})
        m = read_json(p / METRICS_FILE)
        task = m.get("task") or ("binary" if "score" in df.columns else "unknown")
        classes = list(m.get("classes") or ["negative", "positive"])
        n_boot, seed = 1000, 0
        if task == "unknown":
            raise ValueError(f"{p}: metrics.json names no task (written by an older medtl); run medtl evaluate "
                             "again to compare it")
    else:
        raise FileNotFoundError(f"{p}: neither a cross-validation run folder (cv.json) nor a medtl evaluate "
                                "output folder (metrics.json + predictions.csv)")
    suffix = decision_suffix(df, task, classes)
    plain, used = score_columns(task, classes), score_columns(task, classes, suffix)
    need = ["file", "patient", *label_columns(task, classes), *used]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ValueError(f"{p}: prediction table lacks column(s) {', '.join(missing)}")
    table = df[need].rename(columns=dict(zip(used, plain)))
    return table, task, classes, ", ".join(used), n_boot, seed


def _paired_auc(y: np.ndarray, sa: np.ndarray, sb: np.ndarray, groups: np.ndarray, n_boot: int,
                seed: int) -> dict[str, Any]:
    """DeLong and patient-bootstrap comparison of two score columns on 0/1 labels."""
    d = delong_test(y, sa, sb)
    boot = bootstrap_paired_difference(y, sa, sb, "roc_auc", groups, n_boot=n_boot, seed=seed)
    return {
        "auc_a": d["auc_a"], "auc_b": d["auc_b"], "diff": d["diff"], "n_pos": int(y.sum()),
        "delong": {k: d[k] for k in ("se", "ci_low", "ci_high", "z", "p_value")},
        "bootstrap": _boot_dict(boot, seed),
    }


def _boot_dict(boot: Any, seed: int) -> dict[str, Any]:
    return {"low": boot.low, "high": boot.high, "n_boot": boot.n_boot, "n_skipped": boot.n_skipped,
            "unit": "patient", "seed": seed}


def compare_runs(run_a: str | Path, run_b: str | Path, n_boot: int | None = None,
                 seed: int | None = None) -> dict[str, Any]:
    """Paired comparison of two runs' pooled ROC AUC on the images both scored.

    Args:
        run_a, run_b: CV run folders (their out-of-fold predictions) or ``medtl evaluate``
            output folders (their predictions on one external set).
        n_boot: bootstrap replicates (default: run A's ``evaluate.bootstrap``).
        seed: bootstrap seed (default: run A's seed).

    Returns:
        ``auc_a``, ``auc_b``, ``diff`` (A - B), ``delong`` (se, ci_low, ci_high, z, p_value of
        DeLong's paired test, which treats images as independent), ``bootstrap`` (the paired
        difference's 95% interval from resampling patients, both runs on the same replicates;
        the one to trust when patients have several films), and the counts ``n_common``,
        ``n_only_a``, ``n_only_b``, ``n_pos``, ``n_patients``. Multilabel and multiclass
        runs: the top-level figures are for the macro ROC AUC (one class against the rest,
        averaged; ``delong`` is None, as DeLong has no macro form) and ``per_class`` holds
        the binary comparison of each class.

    Raises:
        ValueError: no common files, a label that differs between the runs, or runs of
            different tasks or classes.

    Example:
        >>> r = compare_runs("runs/a/cv-1", "runs/b/cv-2")
        >>> r["diff"], r["bootstrap"]["low"], r["delong"]["p_value"]
    """
    a, task, classes, col_a, nb_a, seed_a = _scores_of(run_a)
    b, task_b, classes_b, col_b, _, _ = _scores_of(run_b)
    if (task, classes) != (task_b, classes_b):
        raise ValueError(f"{run_a} is {task} {classes} but {run_b} is {task_b} {classes_b}; "
                         "compare runs of the same task and classes")
    both = a.merge(b, on="file", suffixes=("_a", "_b"))
    if both.empty:
        raise ValueError(f"{run_a} and {run_b}: no file in common; compare runs on the same images")
    for col in label_columns(task, classes):
        clash = both[both[f"{col}_a"] != both[f"{col}_b"]]
        if len(clash):
            raise ValueError(f"{clash['file'].iloc[0]}: {col} {clash[f'{col}_a'].iloc[0]} in {run_a} but "
                             f"{clash[f'{col}_b'].iloc[0]} in {run_b} ({len(clash)} such files); "
                             "the runs used different labels")
    side = {s: both.rename(columns=lambda c, s=s: c[:-2] if c.endswith(s) else c) for s in ("_a", "_b")}
    y = targets_from_frame(side["_a"], task, classes)
    sa, sb = (scores_from_frame(side[s], task, classes) for s in ("_a", "_b"))
    groups = both["patient_a"].to_numpy(dtype=object)
    n_boot = nb_a if n_boot is None else int(n_boot)
    seed = seed_a if seed is None else int(seed)
    counts = {"run_a": str(run_a), "run_b": str(run_b), "score_a": col_a, "score_b": col_b, "task": task,
              "classes": classes, "n_common": int(len(both)), "n_only_a": int(len(a) - len(both)),
              "n_only_b": int(len(b) - len(both)), "n_patients": int(pd.Series(groups).nunique())}
    if task == "binary":
        return jsonable({**counts, **_paired_auc(y[:, 0].astype(np.int64), sa[:, 0], sb[:, 0], groups, n_boot,
                                                  seed)})
    per = {c: _paired_auc(y[:, k].astype(np.int64), sa[:, k], sb[:, k], groups, n_boot, seed)
           for k, c in enumerate(classes)}
    k = len(classes)

    def macro_diff(yy: np.ndarray, ss: np.ndarray) -> float:
        return float(np.mean([roc_auc(yy[:, j], ss[:, j]) - roc_auc(yy[:, j], ss[:, k + j]) for j in range(k)]))

    boot = bootstrap_ci(y, np.hstack([sa, sb]), macro_diff, groups, n_boot=n_boot, seed=seed)
    auc_a = float(np.mean([per[c]["auc_a"] for c in classes]))
    auc_b = float(np.mean([per[c]["auc_b"] for c in classes]))
    return jsonable({**counts, "auc_a": auc_a, "auc_b": auc_b, "diff": auc_a - auc_b,
                     "n_pos": None, "delong": None,
                     "bootstrap": _boot_dict(boot, seed),
                     "per_class": per})
