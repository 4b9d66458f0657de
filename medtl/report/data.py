"""Everything the report shows, read from a run folder into one :class:`ReportData`.

:func:`collect_report_data` is the only place that knows the run-folder formats (see
:mod:`medtl.run.layout` for the layouts of cross-validation and training
runs); the template only sees the dataclasses below, with images as PNG bytes.

No raw patient id or file path goes into a :class:`ReportData`: patients and images appear as
salted hashes (:mod:`medtl.report.deid`), and the salt stays in the run folder.

Example:
    >>> data = collect_report_data("runs/demo/cv-1a2b3c4d5e")
    >>> data.metrics.columns[:2], len(data.gallery)
    (['pooled [95% CI]', 'mean ± sd'], 12)
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import zipfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medtl.config import load_resolved
from medtl.data.annotations import annotations_digest
from medtl.evaluate.cv_folder import has_patient_ids
from medtl.evaluate.formatting import NO_PATIENTS_NOTE, format_thresholds
from medtl.evaluate.tables import interval_warning, table_metrics
from medtl.io.atomic import read_json
from medtl.registry import map_methods
from medtl.report import plots
from medtl.report.deid import build_deid_index, guard_strings, identifying_strings, run_salt, shareable_config
from medtl.report.gallery import Case, class_views, read_overlays, render_gallery, select_cases
from medtl.run.files import (
    label_columns, read_postprocess, score_columns, scores_from_frame, targets_from_frame, threshold_columns,
)
from medtl.run.layout import (
    CONFIG_FILE, CV_FILE, FOLDS_FILE, HISTORY_FILE, METRICS_FILE, MODEL_FILE, MODEL_INFO_FILE, OOF_FILE,
    POSTPROCESS_FILE, VAL_PREDICTIONS, fold_dir, is_cv_run,
)
from medtl.stats.selective import selective_curve

__all__ = ["Plot", "Cell", "MetricsTable", "Case", "ReportData", "collect_report_data", "METRIC_NAMES"]

METRIC_NAMES: dict[str, str] = {
    "roc_auc": "ROC AUC",
    "pr_auc": "PR AUC (average precision)",
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy",
    "sensitivity": "Sensitivity (recall)",
    "specificity": "Specificity",
    "ppv": "PPV (precision)",
    "npv": "NPV",
    "f1": "F1",
    "brier": "Brier score (lower is better)",
    "ece": "Expected calibration error (lower is better)",
}


@dataclass
class Plot:
    """One figure: a title, the PNG bytes and a caption."""

    title: str
    png: bytes
    caption: str = ""


@dataclass
class Cell:
    """One table cell: a value, optionally with a 95% interval or a standard deviation."""

    value: float | int | None
    low: float | None = None
    high: float | None = None
    sd: float | None = None
    digits: int = 3


@dataclass
class MetricsTable:
    """Rows of (metric label, one cell per column)."""

    columns: list[str]
    rows: list[tuple[str, list[Cell]]]


@dataclass
class ReportData:
    """What the report template renders. Images are PNG bytes; ids are hashes."""

    title: str
    run_name: str
    kind: str
    created: str
    generated: str
    seed: int
    task: str
    classes: list[str]
    backbone: str
    weights: str
    stages: list[dict[str, Any]]
    config_yaml: str
    versions: dict[str, str]
    data_table: list[dict[str, Any]]
    fold_table: list[dict[str, Any]]
    n_images: int
    n_patients: int
    threshold_text: str
    calibration: str
    metrics: MetricsTable
    curves: list[Plot] = field(default_factory=list)
    training: list[Plot] = field(default_factory=list)
    gallery: list[Case] = field(default_factory=list)
    gallery_note: str = ""
    notes: list[str] = field(default_factory=list)
    # What medtl localise wrote (localisation.json) when data.annotations is set; None otherwise.
    localisation: dict[str, Any] | None = None
    # "Which map to trust": faithfulness_table rows (deletion/insertion vs a random map) on the
    # gallery's held-out true positives; [] with faithfulness_note saying why it is absent.
    faithfulness: list[dict[str, str]] = field(default_factory=list)
    faithfulness_note: str = ""
    faithfulness_films: int = 0
    # Films to refer (binary): accuracy against the share of films kept, and one sentence; None: no section.
    refer: Plot | None = None
    refer_text: str = ""
    # The model card (medtl.report.model_card), set by write_report; None: no card section.
    model_card: dict[str, Any] | None = None
    # Never rendered: raw ids, paths and DICOM PHI of the shown cases; write_report refuses to
    # write a page that contains any of them.
    forbidden: list[str] = field(default_factory=list, repr=False)


# --------------------------------------------------------------------------------------------
# One normalised view of a CV run or a training run


@dataclass
class _Source:
    kind: str
    task: str
    classes: list[str]
    preds: pd.DataFrame  # file, patient, group, model_dir, label, score col(s), threshold col(s)
    groups: list[str]
    group_metrics: dict[str, tuple[dict, dict]]
    pooled: tuple[dict, dict] | None
    across: dict | None
    histories: dict[str, pd.DataFrame]
    counts: pd.DataFrame  # file, patient, label (class name): the data the run used
    created: str
    threshold_text: str
    calibration: str
    fold_rows: list[dict[str, Any]]
    notes: list[str]


def _to_minutes(stamp: str) -> str:
    """An ISO time stamp as ``YYYY-MM-DD HH:MM``, the form the report's generation time takes;
    anything else unchanged (a hand-edited cv.json must not stop the report)."""
    try:
        return _dt.datetime.fromisoformat(stamp).strftime("%Y-%m-%d %H:%M")
    except (TypeError, ValueError):
        return stamp


def _fold_label(f: Any) -> str:
    return f"fold {f}"


def _cv_source(run: Path, cfg: Any) -> _Source:
    metrics_path = run / METRICS_FILE
    if not (run / OOF_FILE).is_file() or not metrics_path.is_file():
        raise FileNotFoundError(f"{run}: no {OOF_FILE} / {METRICS_FILE} yet; pool the finished "
                                f"folds first with: medtl cv --merge {run}")
    m = read_json(metrics_path)
    task, classes = m["task"], list(m["classes"])
    oof = pd.read_csv(run / OOF_FILE, dtype={"file": str, "patient": str})
    suffix = "_calibrated" if m.get("score", "score").startswith("score_calibrated") else ""
    decision = score_columns(task, classes, suffix)
    tcols = threshold_columns(task, classes)
    preds = oof[["file", "patient", "fold", *label_columns(task, classes), *tcols]].copy()
    for raw, col in zip(score_columns(task, classes), decision):
        preds[raw] = oof[col].to_numpy(dtype=np.float64)  # decision scale, under the plain name
    preds["group"] = [_fold_label(f) for f in preds["fold"]]
    preds["model_dir"] = [str(fold_dir(run, f)) for f in preds["fold"]]
    done = [int(f) for f in m["finished_folds"]]
    groups = [_fold_label(f) for f in done]

    n_boot = int(cfg.evaluate.bootstrap)
    group_metrics = {}
    for f, g in zip(done, groups):
        part = preds[preds["fold"] == f]
        t = part[tcols].to_numpy(dtype=np.float64) if tcols else None
        _, ci = table_metrics(task, classes, targets_from_frame(part, task, classes),
                                   scores_from_frame(part, task, classes), t,
                                   part["patient"].to_numpy(dtype=object), n_boot=n_boot, seed=cfg.seed)
        group_metrics[g] = (m["per_fold"][str(f)], ci)  # points as merged; intervals per fold here

    histories = {}
    for f, g in zip(done, groups):
        h = fold_dir(run, f) / HISTORY_FILE
        if h.is_file():
            histories[g] = pd.read_csv(h)
    folds = pd.read_csv(run / FOLDS_FILE, dtype={"file": str, "patient": str})
    cv = read_json(run / CV_FILE)
    notes = []
    if m.get("missing_folds"):
        notes.append(f"Only {len(done)} of {m['folds']} folds have finished (missing: "
                     f"{', '.join(map(str, m['missing_folds']))}); pooled figures cover the finished folds.")
    if m.get("skipped"):
        notes.append(f"{len(m['skipped'])} test image(s) could not be read and are left out of the metrics.")
    notes += [f"Warning, {w}." for w in m.get("warnings", [])]
    fold_rows = []
    for f, g in zip(done, groups):
        info = (m.get("fold_info") or {}).get(str(f), {})
        thr = (m.get("thresholds") or {}).get(str(f))
        fold_rows.append({"fold": g, "train": info.get("n_train"), "val": info.get("n_val"),
                          "test": info.get("n_test"), "test_patients": info.get("n_test_patients"),
                          "threshold": None if thr is None else format_thresholds(thr, classes),
                          "wall_time_s": info.get("wall_time_s")})
    rule = m.get("threshold_rule")
    thr_text = ("arg-max of the class probabilities (multiclass)" if rule is None else
                f"'{rule}', chosen on each fold's validation split (never its test fold); "
                "pooled figures use each image's own fold threshold")
    return _Source(
        kind="cross-validation", task=task, classes=classes, preds=preds, groups=groups,
        group_metrics=group_metrics, pooled=(m["pooled"], m.get("pooled_ci") or {}),
        across=m.get("across_folds"), histories=histories,
        counts=folds.assign(label=folds["label"].astype(str)), created=str(cv.get("created", "")),
        threshold_text=thr_text, calibration=str(m.get("calibration", "none")), fold_rows=fold_rows,
        notes=notes,
    )


def _train_source(run: Path, cfg: Any) -> _Source:
    val_path = run / VAL_PREDICTIONS
    if not val_path.is_file():
        raise FileNotFoundError(f"{run}: neither a cross-validation run (no cv.json) nor a finished training "
                                "run (no val_predictions.csv); pass the folder printed by medtl cv or medtl train")
    info_path = run / MODEL_INFO_FILE
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    task = info.get("task", cfg.task)
    classes = list(info.get("classes") or cfg.data.classes or [])
    val = pd.read_csv(val_path, dtype={"path": str, "patient_id": str})
    preds = val.rename(columns={"path": "file", "patient_id": "patient"})
    tcols = threshold_columns(task, classes)
    t = info.get("threshold")
    notes = []
    calibration, rule = "none", info.get("threshold_rule") or "default"
    pp_path = run / POSTPROCESS_FILE
    if pp_path.is_file():  # what medtl predict applies to this run: calibrated scores, their threshold
        pp = read_postprocess(run)
        cols = score_columns(task, classes)
        preds[cols] = pp.calibrate(preds[cols].to_numpy(dtype=np.float64))
        t, calibration, rule = pp.thresholds, pp.calibration, f"{pp.rule} on the validation split"
        if calibration != "none":
            notes.append(f"Scores are calibrated ({calibration}) by a calibrator fitted on this same validation "
                         "split, so its calibration figures are optimistic.")
    if tcols:
        if t is None:
            t = 0.5
            notes.append("No threshold was saved with this model; the report uses 0.5.")
        for col, v in zip(tcols, np.broadcast_to(np.asarray(t, dtype=np.float64), (len(tcols),))):
            preds[col] = float(v)
    preds["group"] = "validation"
    preds["model_dir"] = str(run)
    y = targets_from_frame(preds, task, classes, where=str(val_path))
    s = scores_from_frame(preds, task, classes, where=str(val_path))
    tt = preds[tcols].to_numpy(dtype=np.float64) if tcols else None
    res = table_metrics(task, classes, y, s, tt, preds["patient"].to_numpy(dtype=object),
                             n_boot=int(cfg.evaluate.bootstrap), seed=cfg.seed)
    notes.append("A single training run: the figures describe its validation split, which also chose the "
                 "checkpoint; run medtl cv for an unbiased estimate.")
    few = interval_warning(task, classes, y, preds["patient"].to_numpy(dtype=object))
    if few:
        notes.append(f"Warning, validation split: {few}.")
    hist = {"training": pd.read_csv(run / HISTORY_FILE)} if (run / HISTORY_FILE).is_file() else {}
    tm = json.loads((run / METRICS_FILE).read_text()) if (run / METRICS_FILE).is_file() else {}
    label_names = ([classes[int(i)] for i in preds["label"]] if "label" in preds and classes
                   else ["-"] * len(preds))
    counts = pd.DataFrame({"file": preds["file"], "patient": preds["patient"], "label": label_names})
    if tm:
        notes.append(f"Training split: {tm.get('n_train')} images of {tm.get('n_train_patients')} patients "
                     f"(class counts below are of the validation split).")
    mtime = _dt.datetime.fromtimestamp(val_path.stat().st_mtime).strftime("%Y-%m-%dT%H:%M:%S")
    return _Source(
        kind="training run", task=task, classes=classes, preds=preds, groups=["validation"],
        group_metrics={"validation": res}, pooled=None, across=None, histories=hist, counts=counts,
        created=mtime, threshold_text=f"{format_thresholds(t, classes)} ({rule})",
        calibration=calibration, fold_rows=[], notes=notes,
    )


# --------------------------------------------------------------------------------------------
# Tables


def _num(v: Any) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if f != f else f


def _flat(task: str, m: dict) -> dict[str, Any]:
    """metric key -> value (nested per-class metrics flattened to 'key · class')."""
    if task == "binary":
        return {k: m.get(k) for k in METRIC_NAMES if k in m}
    out: dict[str, Any] = {}
    per = m.get("per_label") or m.get("per_class") or {}
    for k in METRIC_NAMES:
        if k in (m.get("macro") or {}):
            out[f"{k}|macro"] = m["macro"][k]
        elif k in m:
            out[k] = m[k]
    for name, pm in per.items():
        for k in ("roc_auc", "pr_auc", "sensitivity", "specificity"):
            if k in pm:
                out[f"{k}|{name}"] = pm[k]
    return out


def _flat_ci(task: str, ci: dict) -> dict[str, dict]:
    if task == "binary":
        return ci
    out = {}
    for name, cs in (ci.get("per_label") or {}).items():
        out.update({f"{k}|{name}": v for k, v in cs.items()})
    if "macro_roc_auc" in ci:
        out["roc_auc|macro"] = ci["macro_roc_auc"]
    for k in ("accuracy", "balanced_accuracy"):
        if k in ci:
            out[k] = ci[k]
    return out


def _label(key: str) -> str:
    k, _, cls = key.partition("|")
    return METRIC_NAMES.get(k, k) + (f" · {cls}" if cls else "")


def _cell(value: Any, ci: dict | None = None) -> Cell:
    ci = ci or {}
    return Cell(_num(value), _num(ci.get("low")), _num(ci.get("high")))


def _metrics_table(src: _Source) -> MetricsTable:
    task = src.task
    flat_groups = {g: (_flat(task, m), _flat_ci(task, ci)) for g, (m, ci) in src.group_metrics.items()}
    columns, keyed = [], []
    if src.pooled is not None:
        columns += ["pooled [95% CI]", "mean ± sd across folds"]
        pm, pci = _flat(task, src.pooled[0]), _flat_ci(task, src.pooled[1])
        across = _flat(task, src.across or {})
        keyed.append(lambda k: [_cell(pm.get(k), pci.get(k)), _across_cell(across.get(k))])
        keys = list(pm)
    else:
        keys = list(next(iter(flat_groups.values()))[0])
    columns += [f"{g} [95% CI]" for g in src.groups]
    rows = []
    for k in keys:
        cells = [c for f in keyed for c in f(k)]
        cells += [_cell(flat_groups[g][0].get(k), flat_groups[g][1].get(k)) for g in src.groups]
        rows.append((_label(k), cells))
    if task == "binary":
        def count_row(label: str, key: str) -> tuple[str, list[Cell]]:
            cells = []
            if src.pooled is not None:
                cells += [Cell(src.pooled[0].get(key), digits=0), Cell(None)]
            cells += [Cell(src.group_metrics[g][0].get(key), digits=0) for g in src.groups]
            return label, cells
        thr = ([Cell(None), Cell(None)] if src.pooled is not None else []) + \
              [Cell(_num(src.group_metrics[g][0].get("threshold")), digits=4) for g in src.groups]
        rows += [("Threshold", thr), count_row("Images", "n"), count_row("Positive images", "n_pos"),
                 count_row("Patients", "n_patients")]
    return MetricsTable(columns, rows)


def _across_cell(a: Any) -> Cell:
    if not isinstance(a, dict):
        return Cell(None)
    return Cell(_num(a.get("mean")), sd=_num(a.get("std")))


def _data_table(counts: pd.DataFrame) -> list[dict[str, Any]]:
    rows = []
    for name, part in counts.groupby("label", sort=True):
        rows.append({"class": str(name), "images": int(len(part)), "patients": int(part["patient"].nunique())})
    rows.append({"class": "all", "images": int(len(counts)), "patients": int(counts["patient"].nunique())})
    return rows


# --------------------------------------------------------------------------------------------
# Figures


def _curve_plots(src: _Source) -> list[Plot]:

    p = src.preds
    task, classes = src.task, src.classes
    y = targets_from_frame(p, task, classes)
    s = scores_from_frame(p, task, classes)
    out: list[Plot] = []
    if task == "binary":
        curves = {g: (y[(p["group"] == g).to_numpy(), 0], s[(p["group"] == g).to_numpy(), 0]) for g in src.groups}
        if src.pooled is not None:
            curves["pooled"] = (y[:, 0], s[:, 0])
        hl = "pooled" if src.pooled is not None else src.groups[0]
        pos = classes[1] if len(classes) > 1 else "positive"
        out.append(Plot("ROC curves", plots.to_png(plots.plot_roc(curves, highlight=hl)),
                        f"Positive class: {pos}. Thin lines: each {'fold' if src.pooled else 'split'}; "
                        "bold: all out-of-fold predictions pooled."))
        out.append(Plot("Precision-recall curves", plots.to_png(plots.plot_pr(curves, highlight=hl)),
                        "The dotted line is the prevalence, what a random score achieves."))
        t = p["threshold"].to_numpy(dtype=np.float64)
        cm = plots.confusion_counts(y[:, 0], s[:, 0], t)
        ts = np.unique(t)
        thr = f"threshold {ts[0]:.4f}" if ts.size == 1 else "each fold's own threshold"
        names = classes if len(classes) == 2 else ["negative", "positive"]
        out.append(Plot("Confusion matrix", plots.to_png(plots.plot_confusion(cm, names, f"All images, {thr}")),
                        f"Decisions at {thr}; percentages are of each true class."))
        if s.min() >= 0 and s.max() <= 1:
            out.append(Plot("Calibration", plots.to_png(plots.plot_reliability(y[:, 0], s[:, 0])),
                            "Observed fraction of positives against the mean predicted probability, "
                            f"in 10 equal-width bins (calibration: {src.calibration})."))
        return out
    # y is one-hot (multiclass) or multi-hot (multilabel): column j is class j against the rest.
    curves = {c: (y[:, j], s[:, j]) for j, c in enumerate(classes)}
    out.append(Plot("ROC curves per class", plots.to_png(plots.plot_roc(curves, highlight=None)),
                    "One-vs-rest, all out-of-fold predictions pooled."))
    out.append(Plot("Precision-recall curves per class", plots.to_png(plots.plot_pr(curves, highlight=None)),
                    "One-vs-rest, all out-of-fold predictions pooled."))
    if task == "multiclass":
        k = len(classes)
        cm = np.zeros((k, k), dtype=np.int64)
        np.add.at(cm, (y.argmax(axis=1), s.argmax(axis=1)), 1)
        out.append(Plot("Confusion matrix", plots.to_png(plots.plot_confusion(cm, classes, "arg-max decisions")),
                        "Rows: true class; columns: predicted class."))
    return out


def _refer(src: _Source) -> tuple[Plot | None, str]:
    """(selective prediction figure, one sentence) for a binary CV run: accuracy on the
    out-of-fold films kept when the least confident (``|logit(score) - logit(threshold)|``, each
    film at its own fold's threshold) are referred first; (None, "") for other tasks and for a
    training run (its validation split chose the threshold and checkpoint: optimistic).

    Example:
        >>> plot, text = _refer(src)   # text: 'Accuracy is 0.912 on all films and 0.950 ...'
    """
    if src.task != "binary" or src.pooled is None or not len(src.preds):
        return None, ""
    p = src.preds
    y = targets_from_frame(p, src.task, src.classes)[:, 0]
    s = scores_from_frame(p, src.task, src.classes)[:, 0]
    c = selective_curve(y, s, p["threshold"].to_numpy(dtype=np.float64))
    at = dict(zip(c["kept"], c["accuracy"]))
    where = "out-of-fold predictions"
    text = (f"Accuracy is {at[1.0]:.3f} on all {c['n_kept'][0]} films of the {where} and {at[0.9]:.3f} on the "
            f"{c['n_kept'][c['kept'].index(0.9)]} kept when the least confident 10% are referred to a reader.")
    caption = ("Confidence: the distance of the score from the threshold in logit space; each film is "
               f"scored by one model ({where}). On new films, medtl predict and medtl evaluate also flag "
               "a film uncertain when the fold models (or, with predict.tta, the test-time views) disagree.")
    return Plot("Accuracy against the share of films kept", plots.to_png(plots.plot_selective(c)), caption), text


def _training_plots(src: _Source, monitor: str) -> list[Plot]:
    out = []
    for g, h in src.histories.items():
        n = int(h["stage"].nunique()) if "stage" in h else 1
        fig = plots.plot_training(h, monitor=monitor, title=f"{g}: {n} stage{'s' if n != 1 else ''}")
        out.append(Plot(f"Training, {g}", plots.to_png(fig),
                        f"Dotted lines separate stages; the star marks the best {monitor} (the saved model)."))
    return out


# --------------------------------------------------------------------------------------------
# The run


def _versions(run: Path, model_dirs: list[str]) -> dict[str, str]:
    """Versions of this environment (read without importing TensorFlow), and the Keras version
    stored in the saved model."""
    out = {}
    for dist in ("medtl", "tensorflow", "keras"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    out["python"] = platform.python_version()
    for d in model_dirs:
        model = Path(d) / MODEL_FILE if Path(d).is_dir() else Path(d)
        if model.is_file() and zipfile.is_zipfile(model):
            try:
                with zipfile.ZipFile(model) as zf:
                    meta = json.loads(zf.read("metadata.json"))
                out["keras (saved the model)"] = str(meta.get("keras_version"))
                break
            except (KeyError, ValueError, zipfile.BadZipFile):
                continue
    return out


def _stage_rows(cfg: Any, run: Path, model_dirs: list[str]) -> list[dict[str, Any]]:
    ran: dict[int, list[int]] = {}
    for d in dict.fromkeys(model_dirs):
        p = Path(d) / METRICS_FILE
        if p.is_file():
            for st in json.loads(p.read_text()).get("stages", []):
                ran.setdefault(int(st["stage"]), []).append(int(st.get("epochs_run", 0)))
    rows = []
    for i, st in enumerate(cfg.train.stages, start=1):
        what = {"head": "classifier head only", "all": "all layers"}.get(st.unfreeze, f"top {st.unfreeze} blocks")
        runs_ = ran.get(i)
        rows.append({"stage": i, "trainable": what, "epochs": st.epochs, "lr": f"{st.lr:g}",
                     "optimizer": st.optimizer, "schedule": st.schedule,
                     "epochs_run": "-" if not runs_ else f"{np.mean(runs_):.1f}"})
    return rows


def _second_method(compare: str | None, cam: str) -> str | None:
    if compare is not None and compare not in map_methods():
        raise ValueError(f"compare: invalid value {compare!r}; expected {', '.join(map_methods())}")
    if compare == cam:
        raise ValueError(f"compare: {compare!r} is the run's report.cam already; choose another method")
    return compare


def collect_report_data(run_dir: str | Path, compute_cams: bool = True, n_cases: int | None = None,
                        compare: str | None = None, annotations: str | Path | None = None) -> ReportData:
    """Read a cross-validation (or training) run folder into a :class:`ReportData`.

    Args:
        run_dir: a folder made by ``medtl cv`` (after merging) or ``medtl train``.
        compute_cams: compute CAM overlays for the gallery with the fold models (needs
            TensorFlow); False shows only precomputed overlays (``overlays/overlays.csv``).
        n_cases: cases per gallery group (default ``report.cases`` of the run's config).
        compare: a second CAM method for each gallery case (default ``report.compare``).
        annotations: boxes or masks CSV for the localisation section (default
            ``data.annotations`` of the run's config).

    Raises:
        FileNotFoundError: not a run folder, or a CV run that has not been merged yet.

    Example:
        >>> data = collect_report_data("runs/demo/cv-1a2b3c4d5e", compute_cams=False)
        >>> data.metrics.rows[0][0]
        'ROC AUC'
    """
    run = Path(run_dir)
    if not (run / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{run}: no config.yaml; pass a run folder made by medtl cv or medtl train")
    cfg = load_resolved(run / CONFIG_FILE)
    src = _cv_source(run, cfg) if is_cv_run(run) else _train_source(run, cfg)
    salt = run_salt(run)
    model_dirs = list(dict.fromkeys(src.preds["model_dir"]))

    # Every film and patient of the run, not only the gallery's: a value can reach the page
    # from anywhere (the config, a class name, a note).
    forbidden = guard_strings(identifying_strings(
        [*src.counts["file"], *src.preds["file"]], [*src.counts["patient"], *src.preds["patient"]], src.classes))
    build_deid_index(run, forbidden)  # for deid_check, which the report runs before it is written
    n = n_cases if n_cases is not None else cfg.report.cases
    cases = pd.concat([select_cases(v, n) for v in class_views(src.preds, src.task, src.classes)],
                      ignore_index=True)
    gallery, gallery_note = render_gallery(
        cases, salt, classes=src.classes, method=cfg.report.cam, target_layer=cfg.report.target_layer,
        overlays=read_overlays(run), compute=compute_cams,
        occlusion={"patch": cfg.report.occlusion_patch, "stride": cfg.report.occlusion_stride},
        compare=_second_method(compare or cfg.report.compare, cfg.report.cam),
        read={"window": cfg.data.window, "frame": cfg.data.frame, "max_pixels": cfg.data.max_pixels})

    notes = list(src.notes)
    faith, faith_note, faith_films = _faithfulness(
        cases, cfg, compute_cams, src.classes, _second_method(compare or cfg.report.compare, cfg.report.cam))
    localisation = _localisation(run, cfg, compute_cams, annotations)
    if not has_patient_ids(cfg):
        notes.insert(0, NO_PATIENTS_NOTE + ".")
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    refer, refer_text = _refer(src)
    return ReportData(
        title=f"medtl report: {cfg.name}",
        run_name=run.name,
        kind=src.kind,
        created=_to_minutes(src.created),
        generated=now,
        seed=int(cfg.seed),
        task=src.task,
        classes=src.classes,
        backbone=cfg.model.backbone,
        weights=cfg.model.weights,
        stages=_stage_rows(cfg, run, model_dirs),
        config_yaml=shareable_config((run / CONFIG_FILE).read_text()),
        versions=_versions(run, model_dirs),
        data_table=_data_table(src.counts),
        fold_table=src.fold_rows,
        n_images=int(len(src.counts)),
        n_patients=int(src.counts["patient"].nunique()),
        threshold_text=src.threshold_text,
        calibration=src.calibration,
        metrics=_metrics_table(src),
        curves=_curve_plots(src),
        training=_training_plots(src, cfg.train.monitor),
        gallery=gallery,
        gallery_note=gallery_note,
        notes=notes,
        localisation=localisation,
        faithfulness=faith,
        faithfulness_note=faith_note,
        faithfulness_films=faith_films,
        refer=refer,
        refer_text=refer_text,
        forbidden=forbidden,
    )


def _localisation(run: Path, cfg: Any, compute: bool, annotations: str | Path | None = None
                  ) -> dict[str, Any] | None:
    """localisation.json of ``RUN/localisation/`` for ``annotations`` (default:
    ``data.annotations``; None when neither is set): read if it was scored against that CSV
    (the same bytes), else made with the run's models (when maps may be computed), else None.
    A stored result that records no CSV (older medtl) is read for ``data.annotations`` only."""
    source = annotations or cfg.data.annotations
    if not source:
        return None
    done = run / "localisation" / "localisation.json"
    stored = read_json(done) if done.is_file() else None
    scored_on = ((stored or {}).get("settings") or {}).get("annotations_sha256")
    if stored is not None and (scored_on == annotations_digest(source) or (scored_on is None and not annotations)):
        return stored
    if not compute:
        return None
    # why: maps need the models (TensorFlow); only a config with annotations pays for it
    from medtl.explain.localise import localise_run

    localise_run(run, source, done.parent, n_boot=cfg.evaluate.bootstrap, seed=cfg.seed)
    return read_json(done)


FAITHFULNESS_PER_MODEL = 12  # held-out true positives per fold model: the report stays quick
FAITHFULNESS_STEPS = 10
FAITHFULNESS_BOOT = 200


def _faithfulness(cases: pd.DataFrame, cfg: Any, compute: bool, classes: list[str],
                  compare: str | None) -> tuple[list[dict[str, str]], str, int]:
    """Deletion/insertion faithfulness of the report's map methods on the gallery's true
    positives, each film with the model that did not train on it (at most
    :data:`FAITHFULNESS_PER_MODEL` per fold model), the per-film AUCs pooled over the folds.

    Returns:
        (faithfulness_table rows, '' or one sentence on why there are none, films scored).
    """
    if not compute:
        return [], "Not computed: this report was made without computing heat maps.", 0
    tps = cases[cases["kind"] == "true positive"].drop_duplicates(["file", "target"])
    if tps.empty:
        return [], "Not computed: there is no held-out true positive to test the maps on.", 0
    if not any((Path(m) / MODEL_FILE).is_file() for m in tps["model_dir"]):  # before TensorFlow loads
        return [], "Not computed: the run folder holds no saved model to score the maps with.", 0
    # why: the map methods load TensorFlow; only a report that computes maps pays for it
    from medtl.explain.faithfulness import faithfulness_table, pool_faithfulness
    # why: as above (reads the films as the fold model read them)
    from medtl.explain.files import faithfulness_for_files

    methods = [cfg.report.cam] + ([compare] if compare else [])
    parts, groups, failed = [], [], []
    for model_dir, part in tps.groupby("model_dir", sort=False):
        part = part.head(FAITHFULNESS_PER_MODEL)
        try:
            parts.append(faithfulness_for_files(
                model_dir, part["file"].tolist(), methods,
                class_names=None if cfg.task == "binary" else part["target"].tolist(),
                target_layer=cfg.report.target_layer, patch=cfg.report.occlusion_patch,
                stride=cfg.report.occlusion_stride, groups=part["patient"].astype(str).tolist(),
                steps=FAITHFULNESS_STEPS, n_boot=min(int(cfg.evaluate.bootstrap), FAITHFULNESS_BOOT),
                seed=int(cfg.seed)))
        except Exception as exc:  # noqa: BLE001 - the section says the maps could not be scored
            failed.append(type(exc).__name__)
            continue
        groups += part["patient"].astype(str).tolist()
    if not parts:
        return [], f"Not computed: the fold models could not score the maps ({', '.join(sorted(set(failed)))}).", 0
    pooled = pool_faithfulness(parts, groups=groups, n_boot=min(int(cfg.evaluate.bootstrap), FAITHFULNESS_BOOT),
                               seed=int(cfg.seed))
    note = (f"{len(failed)} fold model(s) could not be scored and are left out." if failed else "")
    return faithfulness_table(pooled), note, int(pooled["n_films"])
