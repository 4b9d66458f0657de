"""Metrics of a prediction table: the tables of a cross-validation run (out-of-fold, per fold)
and of an external evaluation, with patient-bootstrap intervals.

The tables' columns and their readers live in :mod:`medtl.run.files`.

Example:
    >>> from medtl.run.files import scores_from_frame, targets_from_frame
    >>> y, s = targets_from_frame(oof, "binary", classes), scores_from_frame(oof, "binary", classes)
    >>> m, ci = table_metrics("binary", classes, y, s, oof[["threshold"]].to_numpy(), oof["patient"])
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from medtl.stats.bootstrap import bootstrap_ci, bootstrap_metrics, few_patients_warning
from medtl.stats.metrics import binary_metrics, multiclass_metrics, roc_auc

__all__ = ["table_metrics", "interval_warning", "THRESHOLD_METRICS", "RANK_METRICS"]

THRESHOLD_METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "ppv", "npv", "f1")
RANK_METRICS = ("roc_auc", "pr_auc", "brier", "ece")


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
