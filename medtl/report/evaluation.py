"""The self-contained HTML report of an external evaluation folder (``medtl evaluate --out DIR``).

:func:`collect_evaluation_data` reads ``DIR/metrics.json`` and ``DIR/predictions.csv`` into one
:class:`EvaluationData`; :func:`write_evaluation_report` renders it with
``templates/evaluation.html.j2`` into ``DIR/report.html``. The page leads with whether the films
look like the training films (the shift warning of metrics.json, verbatim, or a sentence with
the figures), then the label metrics with their intervals (or, without labels, why there are
none), the score distribution, films to refer (binary) and a local recalibration if one was
made. Like the run report it embeds every figure and names no film, path or patient: the
page is checked against the prediction table's films and patients before it is written.

Example:
    >>> from medtl.report.evaluation import write_evaluation_report
    >>> write_evaluation_report("eval/site2")
    PosixPath('eval/site2/report.html')
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medtl.evaluate.formatting import format_thresholds
from medtl.io.atomic import read_json, write_atomic
from medtl.report import plots
from medtl.report.data import METRIC_NAMES, Cell, MetricsTable, Plot
from medtl.report.deid import guard_strings, identifying_strings
from medtl.report.html import _check_phi, _environment, _self_contained
from medtl.run.files import label_columns, score_columns, scores_from_frame, targets_from_frame
from medtl.run.layout import CONFIG_FILE, METRICS_FILE, PREDICTIONS_FILE, REPORT_FILE, SKIPPED_FILE
from medtl.stats.selective import selective_curve, selective_summary
from medtl.stats.shift import MIN_FILMS

__all__ = ["EvaluationData", "is_evaluation_dir", "collect_evaluation_data", "render_evaluation_html",
           "write_evaluation_report", "NO_ACCURACY", "NO_SHIFT_MEASURE"]

TEMPLATE = "evaluation.html.j2"
NO_ACCURACY = ("These films have no labels, so no accuracy can be given: the report shows how unlike the "
               "training films they are and how the model's scores are distributed.")
NO_SHIFT_MEASURE = ("Shift was not measured: the model's run keeps no feature summary of its training films "
                    "(runs trained before medtl kept one); the figures below assume films like the training films.")
# The label metrics the report tables, in order; the first four are the headline figures.
_SHOWN = ("roc_auc", "balanced_accuracy", "sensitivity", "specificity", "pr_auc", "accuracy", "ppv", "npv", "f1",
          "brier", "ece")


@dataclass
class EvaluationData:
    """What ``evaluation.html.j2`` renders. Images are PNG bytes; no path or patient id."""

    title: str
    generated: str
    task: str
    classes: list[str]
    n: int
    n_patients: int
    labelled: bool
    threshold_text: str
    warnings: list[str]
    shift_sentence: str
    shift_rows: list[tuple[str, str]]
    metrics: MetricsTable | None = None
    counts: list[dict[str, Any]] = field(default_factory=list)
    curves: list[Plot] = field(default_factory=list)
    score_rows: list[dict[str, Any]] = field(default_factory=list)
    refer: Plot | None = None
    refer_rows: list[dict[str, Any]] = field(default_factory=list)
    refer_text: str = ""
    recalibration: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    # Never rendered: the films and patients of the prediction table; the page must not contain them.
    forbidden: list[str] = field(default_factory=list, repr=False)


def is_evaluation_dir(path: str | Path) -> bool:
    """Whether ``path`` is an output folder of ``medtl evaluate`` (metrics.json with the external
    keys and predictions.csv, no run config), not a training or CV run.

    Example:
        >>> is_evaluation_dir("eval/site2"), is_evaluation_dir("runs/demo/cv-1a2b3c4d5e")
        (True, False)
    """
    p = Path(path)
    if not (p / METRICS_FILE).is_file() or not (p / PREDICTIONS_FILE).is_file() or (p / CONFIG_FILE).is_file():
        return False
    try:
        m = read_json(p / METRICS_FILE)
    except (OSError, ValueError):
        return False
    return isinstance(m, dict) and {"labelled", "score_distribution", "task", "n"} <= set(m)


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.0f}%"


def _interval(v: float | None, ci: Any) -> str:
    if v is None:
        return "–"
    lo, hi = (list(ci) + [None, None])[:2] if isinstance(ci, (list, tuple)) else (None, None)
    return f"{v:.2f}" + (f" [{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else "")


def _shift(m: dict[str, Any], table: pd.DataFrame) -> tuple[str, list[tuple[str, str]]]:
    """(the sentence under the warnings, rows of shift figures) of metrics.json's ``shift``."""
    sh = m.get("shift")
    if not sh:
        return NO_SHIFT_MEASURE, []
    auc = _interval(sh.get("domain_auc"), sh.get("domain_auc_ci"))
    n_ood = int(table["ood"].astype(bool).sum()) if "ood" in table else None
    ood = _pct(sh.get("share_ood")) + (f" ({n_ood} of {sh.get('n')} films)" if n_ood is not None else "")
    cut = float(sh.get("ood_cut_percentile") or 95)
    rows = [("Domain AUC [95% CI]", f"{auc} (0.5: alike; 1: told apart perfectly)"),
            ("Films outside the training range", f"{ood}; k-NN distance above the training films' "
                                                 f"{cut:.0f}th percentile"),
            ("Films measured", str(sh.get("n"))),
            ("Training films kept in the summary", str(sh.get("n_reference")))]
    if "uncertain" in table:
        rows.append(("Films the fold models disagree on", f"{int(table['uncertain'].astype(bool).sum())} of "
                                                          f"{len(table)}"))
    if not sh.get("reliable", True):
        note = sh.get("note") or f"fewer than {MIN_FILMS} films"
        rows.append(("Reliability", f"unreliable: {note}"))
        return (f"The shift figures are unreliable with fewer than {MIN_FILMS} films ({note}); no shift warning "
                "is given either way."), rows
    if sh.get("warning"):
        return "The films differ from the training films: read the figures below with the warning above.", rows
    return (f"No shift detected: domain AUC {auc}, {_pct(sh.get('share_ood'))} of {sh.get('n')} films outside the "
            "training range; these films look like the training films."), rows


def _metrics_table(m: dict[str, Any]) -> MetricsTable:
    """The label metrics with their 95% patient-bootstrap intervals (``intervals``, or
    ``roc_auc_ci`` for folders written before intervals were kept)."""
    iv = dict(m.get("intervals") or {})
    iv.setdefault("roc_auc", m.get("roc_auc_ci") or [None, None])
    task = m.get("task")
    if task == "binary":
        overall = set(_SHOWN)
    elif task == "multiclass":  # these four are over all films; the others are macro averages
        overall = {"accuracy", "balanced_accuracy", "brier", "ece"}
    else:  # multilabel: every figure is a macro average over the labels
        overall = set()
    rows = []
    for k in _SHOWN:
        if m.get(k) is None and k not in ("roc_auc", "balanced_accuracy", "sensitivity", "specificity"):
            continue
        lo, hi = (list(iv.get(k) or []) + [None, None])[:2]
        rows.append((METRIC_NAMES.get(k, k) + ("" if k in overall else " (macro)"), [Cell(m.get(k), lo, hi)]))
    return MetricsTable(["value [95% CI]"], rows)


def _counts(table: pd.DataFrame, task: str, classes: list[str]) -> list[dict[str, Any]]:
    """Films and patients per true class (a film of several labels counts for each)."""
    y = targets_from_frame(table, task, classes)
    rows = [{"class": c, "images": int(y[:, j].sum()), "patients": int(table.loc[y[:, j] > 0, "patient"].nunique())}
            for j, c in enumerate(classes if task != "binary" else classes[1:])]
    if task == "binary":
        neg = y[:, 0] == 0
        rows.insert(0, {"class": classes[0], "images": int(neg.sum()),
                        "patients": int(table.loc[neg, "patient"].nunique())})
    rows.append({"class": "all", "images": int(len(table)), "patients": int(table["patient"].nunique())})
    return rows


def _figures(table: pd.DataFrame, m: dict[str, Any]) -> list[Plot]:
    """ROC curve(s) and score distributions (per true class when labelled)."""
    task, classes, labelled = m["task"], list(m["classes"]), bool(m.get("labelled", True))
    s = scores_from_frame(table, task, classes)
    cols = score_columns(task, classes)
    thr = m.get("threshold")
    out: list[Plot] = []
    if task == "binary":
        t = None if thr is None else float(thr)
        if labelled:
            y = targets_from_frame(table, task, classes)[:, 0]
            if 0 < y.sum() < len(y):
                out.append(Plot("ROC curve", plots.to_png(plots.plot_roc({"these films": (y, s[:, 0])},
                                                                         highlight="these films")),
                                f"Positive class: {classes[1]}."))
            groups = {f"true {classes[0]}": s[y == 0, 0], f"true {classes[1]}": s[y == 1, 0]}
            cap = "Scores of the films of each true class; the dashed line is the run's threshold."
        else:
            groups = {"all films": s[:, 0]}
            cap = "Scores of all films (no labels); the dashed line is the run's threshold."
        out.append(Plot("Score distribution", plots.to_png(plots.plot_score_distribution(
            groups, t, xlabel=f"score (probability of {classes[1]})")), cap))
        return out
    if labelled:
        y = targets_from_frame(table, task, classes)
        curves = {c: (y[:, j], s[:, j]) for j, c in enumerate(classes) if 0 < y[:, j].sum() < len(y)}
        if curves:
            out.append(Plot("ROC curves per class", plots.to_png(plots.plot_roc(curves, highlight=None)),
                            "One class against the rest."))
    for j, (c, col) in enumerate(zip(classes, cols)):
        if labelled:
            yj = targets_from_frame(table, task, classes)[:, j]
            groups = {f"true {c}": s[yj > 0, j], f"not {c}": s[yj == 0, j]}
        else:
            groups = {"all films": s[:, j]}
        t = None if thr is None else float(np.atleast_1d(thr)[j])
        out.append(Plot(f"Score distribution: {c}", plots.to_png(plots.plot_score_distribution(
            groups, t, title=f"Score distribution: {c}", xlabel=col)), ""))
    return out


def _score_rows(m: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for col, d in (m.get("score_distribution") or {}).items():
        rows.append({"column": col, **{k: d.get(k) for k in ("q05", "q25", "q50", "q75", "q95", "mean")},
                     "share_positive": d.get("share_positive")})
    return rows


def _refer(table: pd.DataFrame, m: dict[str, Any]) -> tuple[Plot | None, list[dict[str, Any]], str]:
    """(accuracy against films kept, the 100/90/80% rows of metrics.json's ``selective``, one
    sentence) for labelled binary films; (None, [], "") otherwise."""
    if m.get("task") != "binary" or not m.get("labelled", True) or m.get("threshold") is None or not len(table):
        return None, [], ""
    classes = list(m["classes"])
    y = targets_from_frame(table, "binary", classes)[:, 0]
    s = scores_from_frame(table, "binary", classes)[:, 0]
    t = float(m["threshold"])
    sel = m.get("selective") or selective_summary(y, s, t)  # folders written before it was kept
    rows = [{"kept": k, "n_kept": sel["n_kept"][k], "accuracy": sel["accuracy"][k],
             "balanced_accuracy": sel["balanced_accuracy"][k]} for k in sel["kept_percent"]]
    text = ""
    if len(rows) > 1:
        text = (f"Accuracy is {rows[0]['accuracy']:.3f} on all {rows[0]['n_kept']} films and "
                f"{rows[1]['accuracy']:.3f} on the {rows[1]['n_kept']} kept when the least confident "
                f"{100 - int(rows[1]['kept'])}% are referred to a reader.")
    caption = ("Confidence: the distance of the score from the run's threshold in logit space; the least "
               "confident films are referred first.")
    fig = plots.plot_selective(selective_curve(y, s, t))
    return Plot("Accuracy against the share of films kept", plots.to_png(fig), caption), rows, text


def _recalibration(m: dict[str, Any]) -> dict[str, Any] | None:
    rc = m.get("recalibration")
    if not rc:
        return None
    rows = []
    for k in [k for k in rc["before"] if not k.endswith("_ci")]:
        cells = [Cell(side.get(k), *(list(side.get(f"{k}_ci") or []) + [None, None])[:2])
                 for side in (rc["before"], rc["after"])]
        rows.append((METRIC_NAMES.get(k, k), cells))
    names = list(m.get("classes") or []) if m.get("task") == "multilabel" else None
    return {"k": rc["k"], "n_fit": rc["n_fit"], "n_held_out": rc["n_held_out"],
            "n_patients_held_out": rc["n_patients_held_out"], "rule": rc.get("rule"),
            "calibration": rc.get("calibration"),
            "site_file": Path(str(rc.get("site_file") or "site_postprocess.json")).name,  # the name, never the path
            "threshold_before": format_thresholds(rc.get("threshold_before"), names),
            "threshold_after": format_thresholds(rc.get("threshold_after"), names),
            "table": MetricsTable(["before (the run's threshold)", "after (the site's)"], rows)}


def collect_evaluation_data(eval_dir: str | Path) -> EvaluationData:
    """Read a ``medtl evaluate`` output folder into an :class:`EvaluationData`.

    Raises:
        FileNotFoundError: not an evaluation folder (see :func:`is_evaluation_dir`).

    Example:
        >>> d = collect_evaluation_data("eval/site2")
        >>> d.warnings, d.metrics.rows[0][0]
        ([], 'ROC AUC')
    """
    ev = Path(eval_dir)
    if not is_evaluation_dir(ev):
        raise FileNotFoundError(f"{ev}: not a medtl evaluate output folder (metrics.json with the external "
                                "metrics and predictions.csv); pass the --out folder of medtl evaluate")
    m = read_json(ev / METRICS_FILE)
    table = pd.read_csv(ev / PREDICTIONS_FILE, dtype={"file": str, "patient": str})
    task, classes = m["task"], list(m["classes"])
    labelled = bool(m.get("labelled", True)) and all(c in table for c in label_columns(task, classes))
    files = [*table["file"]]
    if (ev / SKIPPED_FILE).is_file():
        files += [*pd.read_csv(ev / SKIPPED_FILE, dtype={"path": str})["path"]]
    forbidden = guard_strings(identifying_strings(files, table["patient"], classes))
    sentence, shift_rows = _shift(m, table)
    refer, refer_rows, refer_text = _refer(table, m)
    names = classes if task == "multilabel" else None
    notes = []
    if task != "binary":
        notes.append(f"{'Multilabel' if task == 'multilabel' else 'Multiclass'}: figures marked (macro) are "
                     f"averages over the {len(classes)} classes; per-class figures are in per_class.json.")
    return EvaluationData(
        title="medtl external evaluation",
        generated=_dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        task=task,
        classes=classes,
        n=int(m["n"]),
        n_patients=int(m.get("n_patients") or table["patient"].nunique()),
        labelled=labelled,
        threshold_text=(format_thresholds(m.get("threshold"), names) + ("" if m.get("threshold") is None else
                        " (chosen on the run's validation data, unchanged here)")),
        warnings=[str(w) for w in m.get("warnings") or []],
        shift_sentence=sentence,
        shift_rows=shift_rows,
        metrics=_metrics_table(m) if labelled else None,
        counts=_counts(table, task, classes) if labelled else [],
        curves=_figures(table, {**m, "labelled": labelled}),
        score_rows=_score_rows(m),
        refer=refer,
        refer_rows=refer_rows,
        refer_text=refer_text,
        recalibration=_recalibration(m),
        notes=notes,
        forbidden=forbidden,
    )


def render_evaluation_html(data: EvaluationData) -> str:
    """The evaluation report page for ``data`` (HTML with everything embedded).

    Raises:
        ExternalResourceError: the page would fetch an external resource.
    """
    page = _environment().get_template(TEMPLATE).render(d=data, no_accuracy=NO_ACCURACY, min_films=MIN_FILMS)
    _self_contained(page, TEMPLATE)
    return page


def write_evaluation_report(eval_dir: str | Path, out_path: str | Path | None = None) -> Path:
    """Write the self-contained HTML report of a ``medtl evaluate`` output folder.

    Args:
        eval_dir: the ``--out`` folder of ``medtl evaluate`` (metrics.json, predictions.csv).
        out_path: the HTML file (default ``eval_dir/report.html``; folders are created).

    Returns:
        The HTML file's path.

    Raises:
        FileNotFoundError: not an evaluation folder.
        PHIError: the page would contain a film name, path or patient id of the predictions
            (nothing is written).

    Example:
        >>> write_evaluation_report("eval/site2")
        PosixPath('eval/site2/report.html')
    """
    data = collect_evaluation_data(eval_dir)
    page = render_evaluation_html(data)
    _check_phi(page, data.forbidden)
    out = Path(out_path) if out_path is not None else Path(eval_dir) / REPORT_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    return out
