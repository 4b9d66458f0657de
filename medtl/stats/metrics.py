"""Classification metrics on plain arrays of labels and scores (no model needed).

Conventions shared by all of ``medtl.stats``:

* A score ``s`` is called positive when ``s >= threshold``; a tie counts as positive.
* A metric whose definition divides by zero is ``nan``, never an exception and never a
  silent 0: ROC AUC and balanced accuracy with one class present, sensitivity with no
  positives, PPV with no predicted positives, F1 when there are neither positives nor
  predicted positives, and so on. The counts (``tp``, ``fp``, ``tn``, ``fn``, ``n_pos``)
  are always returned beside them so a reader can see why.
* Calibration bins are right-closed, ``(lo, hi]``, with the first bin ``[0, hi]``, as in
  scikit-learn's ``calibration_curve`` and Guo et al. (2017).

Every binary metric is computed by one weighted routine, :func:`weighted_binary_metrics`,
which :mod:`medtl.stats.bootstrap` calls with bootstrap multiplicities as weights; point
estimates and bootstrap replicates therefore share one implementation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

BINARY_METRICS: tuple[str, ...] = (
    "roc_auc",
    "pr_auc",
    "accuracy",
    "balanced_accuracy",
    "sensitivity",
    "specificity",
    "ppv",
    "npv",
    "f1",
    "brier",
    "ece",
)
"""Names of the binary metrics that :func:`weighted_binary_metrics` can compute."""

_COUNTS = ("tp", "fp", "tn", "fn")


# --------------------------------------------------------------------------- validation


def as_binary_labels(y_true: Any, name: str = "y_true") -> np.ndarray:
    """Check and flatten binary labels to a 1-D int8 array of 0/1.

    Accepts shape (N,) or (N, 1) (the data pipeline's binary label shape), bools, ints or
    floats equal to 0/1.

    Raises:
        ValueError: wrong shape, empty, NaN, or a value other than 0/1.
    """
    y = np.asarray(y_true)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"{name}: expected shape (N,) or (N, 1), got {y.shape}; pass one label per image")
    if y.size == 0:
        raise ValueError(f"{name}: is empty; metrics need at least one sample")
    if y.dtype == bool:
        return y.astype(np.int8)
    if not np.issubdtype(y.dtype, np.number):
        raise ValueError(f"{name}: expected numbers 0/1, got dtype {y.dtype}; map class names to 0/1 first")
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{name}: value {y[i].item()!r} at index {i} is not 0 or 1; binary labels must be 0/1")
    return y.astype(np.int8)


def as_scores(y_score: Any, n: int, name: str = "y_score", probability: bool = False) -> np.ndarray:
    """Check and flatten scores to a 1-D float64 array of length ``n``.

    Args:
        y_score: shape (N,) or (N, 1).
        n: the expected length (the number of labels).
        name: the argument name used in error messages.
        probability: also require every value to lie in [0, 1].

    Raises:
        ValueError: wrong shape or length, non-finite values, or (with ``probability``)
            values outside [0, 1].
    """
    s = np.asarray(y_score, dtype=np.float64)
    if s.ndim == 2 and s.shape[1] == 1:
        s = s[:, 0]
    if s.ndim != 1 or s.shape[0] != n:
        raise ValueError(f"{name}: expected shape ({n},) to match the labels, got {s.shape}")
    bad = ~np.isfinite(s)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"{name}: {int(bad.sum())} non-finite value(s), first {s[i]} at index {i}; "
            "scores must be finite (check the model output)"
        )
    if probability and (s.min() < 0.0 or s.max() > 1.0):
        raise ValueError(
            f"{name}: values outside [0, 1] (min {s.min():.4g}, max {s.max():.4g}); Brier score and ECE "
            "need probabilities: apply a sigmoid/softmax or a calibrator first"
        )
    return s


def binarize(y_score: Any, threshold: float) -> np.ndarray:
    """Turn scores into 0/1 predictions with the medtl rule ``score >= threshold``.

    Example:
        >>> binarize([0.2, 0.5, 0.9], 0.5).tolist()
        [0, 1, 1]
    """
    return (np.asarray(y_score) >= threshold).astype(np.int8)


# ------------------------------------------------------------------------ core routine


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with nan where den == 0 (0/0 is undefined, not 0)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def rates_from_counts(tp: Any, fp: Any, tn: Any, fn: Any) -> dict[str, np.ndarray]:
    """Threshold metrics from confusion counts (arrays broadcast; nan where undefined).

    Returns:
        accuracy, balanced_accuracy, sensitivity, specificity, ppv, npv, f1.
    """
    tp, fp, tn, fn = (np.asarray(c, dtype=np.float64) for c in (tp, fp, tn, fn))
    sens = _div(tp, tp + fn)
    spec = _div(tn, tn + fp)
    return {
        "accuracy": _div(tp + tn, tp + fp + tn + fn),
        # nan when a class is absent (scikit-learn would average the present class only).
        "balanced_accuracy": (sens + spec) / 2.0,
        "sensitivity": sens,
        "specificity": spec,
        "ppv": _div(tp, tp + fp),
        "npv": _div(tn, tn + fn),
        "f1": _div(2.0 * tp, 2.0 * tp + fp + fn),
    }


def _uniform_bin_index(p: np.ndarray, n_bins: int) -> np.ndarray:
    # searchsorted(side="left") on the inner edges gives right-closed bins (lo, hi].
    inner = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    return np.searchsorted(inner, p, side="left")


def weighted_binary_metrics(
    y: np.ndarray,
    s: np.ndarray,
    weights: np.ndarray,
    threshold: float = 0.5,
    names: Sequence[str] = BINARY_METRICS,
    n_bins: int = 10,
) -> dict[str, np.ndarray]:
    """Binary metrics for many weightings of one dataset at once.

    Row ``b`` of ``weights`` gives each sample a multiplicity (a bootstrap resample is a
    row of counts; the plain metric is a row of ones). Ties in scores are handled exactly
    as by scikit-learn (midranks for ROC AUC, one step per distinct score for AP).

    Args:
        y: validated 0/1 labels, shape (N,).
        s: validated scores, shape (N,); probabilities when brier/ece are asked for.
        weights: non-negative multiplicities, shape (B, N).
        threshold: decision threshold for the threshold metrics (``s >= threshold``).
        names: metrics to compute, a subset of :data:`BINARY_METRICS`; the confusion
            counts tp/fp/tn/fn/n/n_pos are always returned too.
        n_bins: uniform bins for ECE.

    Returns:
        name -> array of shape (B,), nan where a metric is undefined for that row.
    """
    unknown = set(names) - set(BINARY_METRICS)
    if unknown:
        raise ValueError(f"unknown metric(s) {sorted(unknown)}; choose from {list(BINARY_METRICS)}")
    if "ece" in names and (int(n_bins) != n_bins or n_bins < 1):
        raise ValueError(f"n_bins: invalid value {n_bins!r}; expected an integer >= 1")
    w = np.asarray(weights, dtype=np.float64)
    yf = y.astype(np.float64)
    pos_w = w @ yf
    tot_w = w.sum(axis=1)
    neg_w = tot_w - pos_w
    pred = (s >= threshold).astype(np.float64)
    tp = w @ (yf * pred)
    fp = w @ ((1.0 - yf) * pred)
    out: dict[str, np.ndarray] = {"tp": tp, "fp": fp, "tn": neg_w - fp, "fn": pos_w - tp}
    out["n"] = tot_w
    out["n_pos"] = pos_w
    rates = rates_from_counts(tp, fp, neg_w - fp, pos_w - tp)
    out.update({k: v for k, v in rates.items() if k in names})

    if "roc_auc" in names or "pr_auc" in names:
        # Collapse tied scores into levels (ascending), summing weights per level and class.
        order = np.argsort(s, kind="mergesort")
        s_sorted = s[order]
        starts = np.concatenate(([0], np.flatnonzero(np.diff(s_sorted)) + 1))
        w_sorted = w[:, order]
        lvl_pos = np.add.reduceat(w_sorted * yf[order], starts, axis=1)
        lvl_neg = np.add.reduceat(w_sorted * (1.0 - yf[order]), starts, axis=1)
        if "roc_auc" in names:
            neg_below = np.cumsum(lvl_neg, axis=1) - lvl_neg
            # Mann-Whitney U: a positive beats every lower negative and half of a tied one.
            u = np.sum(lvl_pos * (neg_below + 0.5 * lvl_neg), axis=1)
            out["roc_auc"] = _div(u, pos_w * neg_w)
        if "pr_auc" in names:
            # Average precision: sum over distinct thresholds (descending) of dRecall * precision.
            ctp = np.cumsum(lvl_pos[:, ::-1], axis=1)
            cfp = np.cumsum(lvl_neg[:, ::-1], axis=1)
            precision = np.where(ctp + cfp > 0, ctp / np.maximum(ctp + cfp, 1e-300), 0.0)
            out["pr_auc"] = _div(np.sum(lvl_pos[:, ::-1] * precision, axis=1), pos_w)

    if "brier" in names:
        out["brier"] = _div(w @ (s - yf) ** 2, tot_w)
    if "ece" in names:
        onehot = np.eye(n_bins)[_uniform_bin_index(s, n_bins)]
        gap = w @ (onehot * (s - yf)[:, None])  # per bin: sum(p) - sum(y)
        out["ece"] = _div(np.abs(gap).sum(axis=1), tot_w)
    return out


# ------------------------------------------------------------------------ binary API


def roc_auc(y_true: Any, y_score: Any) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count one half); nan with one class.

    Example:
        >>> roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
        0.75
    """
    y = as_binary_labels(y_true)
    s = as_scores(y_score, y.size)
    return float(weighted_binary_metrics(y, s, np.ones((1, y.size)), names=("roc_auc",))["roc_auc"][0])


def average_precision(y_true: Any, y_score: Any) -> float:
    """Area under the precision-recall curve as average precision (step-wise, no
    interpolation, same as scikit-learn's ``average_precision_score``); nan without positives.

    Example:
        >>> round(average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]), 4)
        0.8333
    """
    y = as_binary_labels(y_true)
    s = as_scores(y_score, y.size)
    return float(weighted_binary_metrics(y, s, np.ones((1, y.size)), names=("pr_auc",))["pr_auc"][0])


def binary_metrics(y_true: Any, y_score: Any, threshold: float = 0.5, *, n_bins: int = 10) -> dict[str, float]:
    """All binary metrics for one set of predicted probabilities.

    Args:
        y_true: 0/1 labels, shape (N,) or (N, 1).
        y_score: predicted probabilities of the positive class in [0, 1], same length.
        threshold: an image is predicted positive when ``y_score >= threshold``.
        n_bins: uniform bins for the expected calibration error.

    Returns:
        Plain floats/ints (JSON-ready): roc_auc, pr_auc (average precision), accuracy,
        balanced_accuracy, sensitivity, specificity, ppv, npv, f1, brier, ece, threshold,
        n, n_pos, tp, fp, tn, fn. Undefined ratios are nan (see the module docstring).

    Raises:
        ValueError: labels not 0/1, lengths differ, or scores outside [0, 1].

    Example:
        >>> m = binary_metrics([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9], threshold=0.5)
        >>> m["sensitivity"], m["specificity"], m["roc_auc"]
        (0.5, 0.5, 0.75)
    """
    y = as_binary_labels(y_true)
    s = as_scores(y_score, y.size, probability=True)
    raw = weighted_binary_metrics(y, s, np.ones((1, y.size)), threshold=float(threshold), n_bins=n_bins)
    out: dict[str, float] = {k: float(raw[k][0]) for k in BINARY_METRICS}
    out["threshold"] = float(threshold)
    out["n"] = int(y.size)
    out["n_pos"] = int(y.sum())
    for k in _COUNTS:
        out[k] = int(round(raw[k][0]))
    return out


def brier_score(y_true: Any, y_prob: Any) -> float:
    """Mean squared difference between the predicted probability and the 0/1 label."""
    y = as_binary_labels(y_true)
    p = as_scores(y_prob, y.size, name="y_prob", probability=True)
    return float(np.mean((p - y) ** 2))


def reliability_curve(
    y_true: Any, y_prob: Any, n_bins: int = 10, strategy: str = "uniform"
) -> dict[str, np.ndarray]:
    """Per-bin mean predicted probability and observed frequency, for a reliability plot.

    Args:
        y_true: 0/1 labels.
        y_prob: predicted probabilities in [0, 1].
        n_bins: number of bins.
        strategy: ``uniform`` (equal-width bins on [0, 1]) or ``quantile`` (edges at the
            quantiles of ``y_prob``; tied quantiles give empty bins).

    Returns:
        ``bin_edges`` (n_bins + 1,), and per bin (n_bins,): ``mean_predicted``,
        ``fraction_positive`` and ``count``. Empty bins are kept with count 0 and nan
        means, so the arrays always have n_bins entries; drop ``count == 0`` to plot.

    Example:
        >>> c = reliability_curve([0, 1, 1, 1], [0.1, 0.7, 0.8, 0.9], n_bins=2)
        >>> c["count"].tolist(), c["fraction_positive"].tolist()
        ([1, 3], [0.0, 1.0])
    """
    y = as_binary_labels(y_true)
    p = as_scores(y_prob, y.size, name="y_prob", probability=True)
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins: invalid value {n_bins!r}; expected an integer >= 1")
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    elif strategy == "quantile":
        edges = np.quantile(p, np.linspace(0.0, 1.0, n_bins + 1))
    else:
        raise ValueError(f"strategy: invalid value {strategy!r}; expected 'uniform' or 'quantile'")
    idx = np.searchsorted(edges[1:-1], p, side="left")
    count = np.bincount(idx, minlength=n_bins)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y.astype(np.float64), minlength=n_bins)
    return {
        "bin_edges": edges,
        "mean_predicted": _div(sum_p, count),
        "fraction_positive": _div(sum_y, count),
        "count": count,
    }


def expected_calibration_error(y_true: Any, y_prob: Any, n_bins: int = 10, strategy: str = "uniform") -> float:
    """Expected calibration error: sum over bins of (bin size / N) * |observed - predicted|.

    Example:
        >>> round(expected_calibration_error([0, 1, 1, 1], [0.1, 0.7, 0.8, 0.9], n_bins=2), 4)
        0.175
    """
    c = reliability_curve(y_true, y_prob, n_bins=n_bins, strategy=strategy)
    keep = c["count"] > 0
    gaps = np.abs(c["fraction_positive"][keep] - c["mean_predicted"][keep])
    return float(np.sum(c["count"][keep] * gaps) / c["count"].sum())


# ------------------------------------------------------- multiclass and multilabel API

_PER_CLASS = ("roc_auc", "pr_auc", "sensitivity", "specificity", "ppv", "npv", "f1")
_MACRO_BINARY = ("roc_auc", "pr_auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "ppv",
                 "npv", "f1", "brier", "ece")


def _names(names: Sequence[str] | None, k: int, what: str) -> list[str]:
    if names is None:
        return [f"{what}_{i}" for i in range(k)]
    names = [str(n) for n in names]
    if len(names) != k or len(set(names)) != k:
        raise ValueError(f"{what}_names: expected {k} distinct names to match the score columns, got {names}")
    return names


def _macro(per: Mapping[str, Mapping[str, float]], keys: Sequence[str]) -> dict[str, float]:
    # Strict mean: nan if any class is undefined, so a macro value always covers all classes.
    return {k: float(np.mean([m[k] for m in per.values()])) for k in keys}


def multiclass_metrics(
    y_true: Any, probs: Any, class_names: Sequence[str] | None = None, *, n_bins: int = 10
) -> dict[str, Any]:
    """Metrics for single-label multiclass predictions (softmax outputs).

    Each class is scored one-vs-rest: AUCs from its probability column, threshold metrics
    from the arg-max decision (predicted class == k).

    Args:
        y_true: integer class indices (N,) or one-hot rows (N, K).
        probs: class probabilities (N, K), rows summing to 1.
        class_names: K names (default ``class_0`` ...).
        n_bins: uniform bins for the top-label ECE.

    Returns:
        ``accuracy``, ``balanced_accuracy`` (mean per-class recall), ``brier`` (multiclass:
        mean over samples of sum_k (p_k - y_k)^2, range [0, 2]), ``ece`` (top-label:
        confidence = max probability), ``n``, ``per_class`` {name: {roc_auc, pr_auc,
        sensitivity, specificity, ppv, npv, f1, n_pos}} and ``macro`` {the same keys
        averaged}. A macro value is nan when the metric is undefined for any class (e.g. a
        class absent from ``y_true``); the per-class entries show which.

    Example:
        >>> m = multiclass_metrics([0, 1, 2], [[.8, .1, .1], [.2, .7, .1], [.3, .3, .4]], ["a", "b", "c"])
        >>> m["accuracy"], m["per_class"]["b"]["sensitivity"]
        (1.0, 1.0)
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(
            f"probs: expected shape (N, K) with K >= 2, got {p.shape}; binary tasks use binary_metrics"
        )
    n, k = p.shape
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise ValueError("probs: values must be finite probabilities in [0, 1]; apply a softmax first")
    row_sum = p.sum(axis=1)
    if np.any(np.abs(row_sum - 1.0) > 1e-3):
        i = int(np.argmax(np.abs(row_sum - 1.0)))
        raise ValueError(f"probs: row {i} sums to {row_sum[i]:.4f}, not 1; pass softmax outputs")
    y = _class_indices(y_true, n, k)
    names = _names(class_names, k, "class")
    pred = p.argmax(axis=1)
    ones = np.ones((1, n))
    per: dict[str, dict[str, float]] = {}
    for c, name in enumerate(names):
        yc = (y == c).astype(np.int8)
        auc = weighted_binary_metrics(yc, p[:, c], ones, names=("roc_auc", "pr_auc"))
        hit = pred == c
        tp, fp = np.sum(hit & (yc == 1)), np.sum(hit & (yc == 0))
        fn, tn = np.sum(~hit & (yc == 1)), np.sum(~hit & (yc == 0))
        rates = rates_from_counts(tp, fp, tn, fn)
        per[name] = {"roc_auc": float(auc["roc_auc"][0]), "pr_auc": float(auc["pr_auc"][0])}
        per[name].update({m: float(rates[m]) for m in _PER_CLASS[2:]})
        per[name]["n_pos"] = int(yc.sum())
    onehot = np.eye(k)[y]
    conf = p.max(axis=1)
    correct = (pred == y).astype(np.int8)
    return {
        "accuracy": float(np.mean(correct)),
        "balanced_accuracy": float(np.mean([per[nm]["sensitivity"] for nm in names])),
        "brier": float(np.mean(np.sum((p - onehot) ** 2, axis=1))),
        "ece": expected_calibration_error(correct, conf, n_bins=n_bins),
        "n": int(n),
        "per_class": per,
        "macro": _macro(per, _PER_CLASS),
    }


def _class_indices(y_true: Any, n: int, k: int) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim == 2:
        if y.shape != (n, k) or not np.all(np.isin(y, (0, 1))) or np.any(y.sum(axis=1) != 1):
            raise ValueError(
                f"y_true: expected one-hot rows of shape ({n}, {k}) or class indices ({n},), got {y.shape}"
            )
        return y.argmax(axis=1)
    if y.shape != (n,):
        raise ValueError(f"y_true: expected class indices of shape ({n},) to match probs, got {y.shape}")
    if not np.issubdtype(y.dtype, np.number) or np.any(y != np.round(y)) or y.min() < 0 or y.max() >= k:
        raise ValueError(
            f"y_true: class indices must be integers in [0, {k - 1}]; map class names to indices first"
        )
    return y.astype(np.int64)


def multilabel_metrics(
    y_true: Any,
    probs: Any,
    label_names: Sequence[str] | None = None,
    thresholds: float | Sequence[float] | Mapping[str, float] = 0.5,
    *,
    n_bins: int = 10,
) -> dict[str, Any]:
    """Metrics for multilabel predictions (independent sigmoid per label).

    Args:
        y_true: multi-hot labels (N, L).
        probs: per-label probabilities (N, L).
        label_names: L names (default ``label_0`` ...).
        thresholds: one threshold for all labels, a sequence of L, or {name: threshold}.
        n_bins: uniform bins for ECE.

    Returns:
        ``per_label`` {name: :func:`binary_metrics` dict}, ``macro`` {metric: mean over
        labels; nan if undefined for any label}, ``n``, and ``exact_match`` (fraction of
        images whose every label is predicted right).

    Example:
        >>> m = multilabel_metrics([[1, 0], [0, 1]], [[.9, .2], [.3, .6]], ["effusion", "nodule"])
        >>> m["macro"]["accuracy"], m["exact_match"]
        (1.0, 1.0)
    """
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or y.shape != p.shape:
        raise ValueError(f"y_true {y.shape} and probs {p.shape}: expected the same shape (N, L)")
    names = _names(label_names, p.shape[1], "label")
    if isinstance(thresholds, Mapping):
        missing = [nm for nm in names if nm not in thresholds]
        if missing:
            raise ValueError(f"thresholds: no threshold for label(s) {missing}; give one per label name")
        ts = [float(thresholds[nm]) for nm in names]
    elif np.ndim(thresholds) == 0:
        ts = [float(thresholds)] * len(names)  # type: ignore[arg-type]
    else:
        ts = [float(t) for t in thresholds]  # type: ignore[union-attr]
        if len(ts) != len(names):
            raise ValueError(f"thresholds: expected {len(names)} values (one per label), got {len(ts)}")
    per = {}
    for j, (nm, t) in enumerate(zip(names, ts)):
        try:
            per[nm] = binary_metrics(y[:, j], p[:, j], threshold=t, n_bins=n_bins)
        except ValueError as err:
            raise ValueError(f"label {nm!r} (column {j}): {err}") from None
    hits = (p >= np.asarray(ts)) == (y == 1)
    return {
        "per_label": per,
        "macro": _macro(per, _MACRO_BINARY),
        "n": int(p.shape[0]),
        "exact_match": float(np.mean(hits.all(axis=1))),
    }


# ------------------------------------------------------------------------- across folds


def summarize_folds(fold_metrics: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation of each metric across folds.

    Nested dicts (``per_class``, ``macro``, ...) are summarised leaf by leaf. Folds where a
    metric is nan are left out of its mean, and ``n`` says how many folds it covers.

    Args:
        fold_metrics: one metrics dict per fold, all with the same keys; leaves must be numbers.

    Returns:
        The same structure with every number replaced by {"mean", "std", "n"}; ``std`` is
        the sample standard deviation (ddof=1), nan with fewer than two defined folds.

    Example:
        >>> summarize_folds([{"roc_auc": 0.75}, {"roc_auc": 0.85}])["roc_auc"]["mean"]
        0.8
    """
    if len(fold_metrics) == 0:
        raise ValueError("fold_metrics: is empty; pass one metrics dict per finished fold")
    return _summarize(list(fold_metrics), "")


def _summarize(items: list[Any], path: str) -> Any:
    if isinstance(items[0], Mapping):
        keys = list(items[0])
        for i, it in enumerate(items):
            if not isinstance(it, Mapping) or set(it) != set(keys):
                got = sorted(it) if isinstance(it, Mapping) else type(it).__name__
                raise ValueError(
                    f"fold {i}: keys at '{path or '/'}' are {got}, fold 0 has {sorted(keys)}; "
                    "summarise folds computed with the same metrics"
                )
        return {k: _summarize([it[k] for it in items], f"{path}/{k}") for k in keys}
    try:
        vals = np.array([float(v) for v in items])
    except (TypeError, ValueError):
        raise ValueError(
            f"metric '{path}': values {items!r} are not numbers; only numeric leaves can be summarised"
        ) from None
    ok = vals[~np.isnan(vals)]
    return {
        "mean": float(ok.mean()) if ok.size else float("nan"),
        "std": float(ok.std(ddof=1)) if ok.size >= 2 else float("nan"),
        "n": int(ok.size),
    }
