"""DeLong's test for ROC AUCs, with the fast midrank algorithm of Sun & Xu (2014).

DeLong, DeLong & Clarke-Pearson (1988) estimate the covariance of correlated AUCs from
"structural components" (placement values): for each positive, the fraction of negatives
it outscores; for each negative, the fraction of positives that outscore it. Sun & Xu
obtain all of them from three midrank computations, O(N log N) instead of O(N+ x N-).

DeLong treats images as independent. When patients contribute several films, aggregate
scores per patient first, or use
:func:`medtl.stats.bootstrap.bootstrap_paired_difference` with ``groups``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

from medtl.stats.metrics import as_binary_labels, as_scores


def _components(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs (K,) and their DeLong covariance (K, K) for scores of shape (K, N)."""
    pos = scores[:, y == 1]
    neg = scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    if m == 0 or n == 0:
        raise ValueError(
            f"y_true: has {m} positive and {n} negative sample(s); the AUC and DeLong's test need both classes"
        )
    # Midranks within positives, within negatives, and over all (Sun & Xu, Algorithm 2).
    r_pos = stats.rankdata(pos, axis=1)
    r_neg = stats.rankdata(neg, axis=1)
    r_all = stats.rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    auc = (r_all[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    v10 = (r_all[:, :m] - r_pos) / n  # per positive: share of negatives below it (ties 1/2)
    v01 = 1.0 - (r_all[:, m:] - r_neg) / m  # per negative: share of positives above it
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((len(auc), len(auc)))
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((len(auc), len(auc)))
    return auc, s10 / m + s01 / n


def delong_auc_variance(y_true: Any, y_score: Any) -> tuple[float, float]:
    """ROC AUC and its DeLong variance.

    Example:
        >>> auc, var = delong_auc_variance([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
        >>> auc
        0.75
    """
    y = as_binary_labels(y_true)
    s = as_scores(y_score, y.size)
    auc, cov = _components(y, s[None, :])
    return float(auc[0]), float(cov[0, 0])


def delong_ci(y_true: Any, y_score: Any, alpha: float = 0.05) -> tuple[float, float, float]:
    """ROC AUC with a DeLong (normal approximation) interval, clipped to [0, 1].

    Returns:
        (auc, low, high).
    """
    auc, var = delong_auc_variance(y_true, y_score)
    half = stats.norm.ppf(1.0 - alpha / 2.0) * np.sqrt(var)
    return auc, float(max(0.0, auc - half)), float(min(1.0, auc + half))


def delong_test(y_true: Any, score_a: Any, score_b: Any, alpha: float = 0.05) -> dict[str, float]:
    """Paired DeLong test of two models' ROC AUCs on the same images.

    Args:
        y_true: 0/1 labels (N,).
        score_a: model A's scores (N,).
        score_b: model B's scores (N,).
        alpha: 0.05 gives a 95% interval for the difference.

    Returns:
        auc_a, auc_b, diff (= auc_a - auc_b), se (of diff), ci_low, ci_high (normal
        interval for diff), z, p_value (two-sided), n, n_pos. Identical AUCs with zero
        variance give z = 0 and p = 1.

    Raises:
        ValueError: one class only, or mismatched lengths.

    Example:
        >>> r = delong_test([0, 0, 0, 1, 1, 1], [.1, .2, .3, .7, .8, .9], [.1, .5, .3, .4, .8, .2])
        >>> r["auc_a"], round(r["auc_b"], 3), r["diff"] > 0
        (1.0, 0.667, True)
    """
    y = as_binary_labels(y_true)
    sa = as_scores(score_a, y.size, name="score_a")
    sb = as_scores(score_b, y.size, name="score_b")
    auc, cov = _components(y, np.stack([sa, sb]))
    diff = float(auc[0] - auc[1])
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    se = float(np.sqrt(max(var, 0.0)))
    if se > 0:
        z = diff / se
    else:
        z = 0.0 if diff == 0 else float(np.copysign(np.inf, diff))
    half = float(stats.norm.ppf(1.0 - alpha / 2.0)) * se
    return {
        "auc_a": float(auc[0]),
        "auc_b": float(auc[1]),
        "diff": diff,
        "se": se,
        "ci_low": diff - half,
        "ci_high": diff + half,
        "z": float(z),
        "p_value": float(2.0 * stats.norm.sf(abs(z))),
        "n": int(y.size),
        "n_pos": int(y.sum()),
    }
