"""Bootstrap confidence intervals, resampling patients rather than images.

Films of one patient are correlated; resampling them as if independent gives intervals
that are too narrow. With ``groups`` (one patient id per image) each bootstrap replicate
draws patients with replacement and takes all their images along (a cluster bootstrap).

A replicate is represented by a row of multiplicities (how often each image was drawn),
so the built-in metrics are computed for all replicates at once with array operations
(:func:`medtl.evaluate.metrics.weighted_binary_metrics`). Replicates where a metric is
undefined (e.g. no positive patient drawn, for ROC AUC) are skipped and counted in
``Interval.n_skipped``. Intervals are percentile intervals.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from medtl.evaluate.metrics import BINARY_METRICS, as_binary_labels, as_scores, weighted_binary_metrics

_MAX_CELLS = 1_000_000  # replicate-by-image cells per chunk (8 MB per float64 temporary)


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap percentile interval.

    Unpacks as ``point, low, high = interval``.

    Attributes:
        point: the metric on the full data.
        low, high: the alpha/2 and 1 - alpha/2 percentiles of the valid replicates (nan
            when none is valid).
        n_boot: replicates drawn.
        n_skipped: replicates where the metric was undefined, left out of the interval.
        alpha: 1 - confidence level.
    """

    point: float
    low: float
    high: float
    n_boot: int
    n_skipped: int
    alpha: float

    def __iter__(self) -> Iterator[float]:
        return iter((self.point, self.low, self.high))

    def to_dict(self) -> dict[str, float | int]:
        """JSON-ready dict of all fields."""
        return asdict(self)


def _group_codes(groups: Any, n: int) -> np.ndarray:
    g = np.asarray(groups, dtype=object)
    if g.ndim != 1 or g.size != n:
        raise ValueError(f"groups: expected one patient id per image, shape ({n},), got {g.shape}")
    index: dict[Any, int] = {}
    codes = np.empty(n, dtype=np.int64)
    for i, v in enumerate(g):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            raise ValueError(f"groups: missing patient id at index {i}; every image needs one")
        codes[i] = index.setdefault(v, len(index))
    return codes


def resample_weights(
    n: int, groups: Any = None, n_boot: int = 1000, seed: int | np.random.Generator = 0
) -> Iterator[np.ndarray]:
    """Bootstrap multiplicities, in chunks of rows.

    Args:
        n: number of images.
        groups: patient id per image, or None to resample images.
        n_boot: total number of replicates.
        seed: seed or numpy Generator.

    Yields:
        float64 arrays (chunk, n); row b says how many times each image is in replicate b.
    """
    rng = np.random.default_rng(seed)
    codes = None if groups is None else _group_codes(groups, n)
    units = n if codes is None else int(codes.max()) + 1
    chunk = max(1, min(n_boot, _MAX_CELLS // max(n, units)))
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        draws = rng.integers(0, units, size=(b, units))
        # bincount over (row, unit) pairs gives the per-row multiplicity of each unit.
        counts = np.bincount((draws + units * np.arange(b)[:, None]).ravel(), minlength=b * units)
        counts = counts.reshape(b, units).astype(np.float64)
        yield counts if codes is None else counts[:, codes]
        done += b


def _interval(point: float, reps: np.ndarray, n_boot: int, alpha: float) -> Interval:
    ok = reps[np.isfinite(reps)]
    if ok.size:
        low, high = np.quantile(ok, [alpha / 2.0, 1.0 - alpha / 2.0])
    else:
        low = high = float("nan")
    return Interval(float(point), float(low), float(high), int(n_boot), int(n_boot - ok.size), float(alpha))


def _check(n_boot: int, alpha: float) -> None:
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot: invalid value {n_boot!r}; expected an integer >= 1 (1000 is usual)")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha: invalid value {alpha!r}; expected 0 < alpha < 1 (0.05 for 95% intervals)")


def bootstrap_metrics(
    y_true: Any,
    y_score: Any,
    groups: Any = None,
    threshold: float = 0.5,
    metrics: Sequence[str] = BINARY_METRICS,
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    n_bins: int = 10,
) -> dict[str, Interval]:
    """Bootstrap intervals for several binary metrics from the same replicates.

    Args:
        y_true: 0/1 labels (N,).
        y_score: probabilities in [0, 1] (N,) (any real scores if only roc_auc/pr_auc).
        groups: patient id per image; None resamples images (only right with one image
            per patient).
        threshold: decision threshold (``score >= threshold``) for threshold metrics.
        metrics: names from :data:`medtl.evaluate.metrics.BINARY_METRICS`.
        n_boot: replicates.
        alpha: 0.05 gives 95% intervals.
        seed: random seed.
        n_bins: uniform bins for ECE.

    Returns:
        metric name -> :class:`Interval`.

    Example:
        >>> ci = bootstrap_metrics([0, 1, 0, 1, 1, 0], [.2, .7, .4, .9, .6, .1],
        ...                        groups=["a", "a", "b", "b", "c", "c"], metrics=("roc_auc",), n_boot=200)
        >>> ci["roc_auc"].point, ci["roc_auc"].n_skipped >= 0
        (1.0, True)
    """
    _check(n_boot, alpha)
    y = as_binary_labels(y_true)
    needs_prob = bool(set(metrics) & {"brier", "ece"})
    s = as_scores(y_score, y.size, probability=needs_prob)
    names = tuple(metrics)
    point = weighted_binary_metrics(y, s, np.ones((1, y.size)), threshold, names, n_bins)
    parts: dict[str, list[np.ndarray]] = {m: [] for m in names}
    for w in resample_weights(y.size, groups, n_boot, seed):
        rep = weighted_binary_metrics(y, s, w, threshold, names, n_bins)
        for m in names:
            parts[m].append(rep[m])
    return {m: _interval(point[m][0], np.concatenate(parts[m]), n_boot, alpha) for m in names}


def bootstrap_ci(
    y_true: Any,
    y_score: Any,
    metric: str | Callable[[np.ndarray, np.ndarray], float] = "roc_auc",
    groups: Any = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    *,
    threshold: float = 0.5,
) -> Interval:
    """Bootstrap percentile interval for one metric.

    Args:
        y_true: labels, indexed along the first axis (any shape for a callable metric).
        y_score: scores, same first dimension (e.g. (N, K) probabilities for a callable).
        metric: a name from :data:`~medtl.evaluate.metrics.BINARY_METRICS` (fast,
            vectorised) or ``fn(y_true, y_score) -> float`` called once per replicate.
            A callable should return nan when the metric is undefined; a ValueError
            raised inside a replicate (as scikit-learn does for one class) is also
            counted as skipped. The point estimate is computed unguarded, so a broken
            callable still fails loudly.
        groups: patient id per image, or None to resample images.
        n_boot: replicates.
        alpha: 0.05 gives a 95% interval.
        seed: random seed.
        threshold: decision threshold for named threshold metrics.

    Returns:
        :class:`Interval` (unpacks as ``point, low, high``).

    Example:
        >>> point, low, high = bootstrap_ci([0, 0, 1, 1, 0, 1], [.1, .4, .35, .8, .2, .9], "roc_auc", n_boot=200)
        >>> low <= point <= high
        True
    """
    if isinstance(metric, str):
        return bootstrap_metrics(
            y_true, y_score, groups, threshold, (metric,), n_boot=n_boot, alpha=alpha, seed=seed
        )[metric]
    _check(n_boot, alpha)
    y = np.asarray(y_true)
    s = np.asarray(y_score)
    if y.shape[:1] != s.shape[:1]:
        raise ValueError(f"y_true {y.shape} and y_score {s.shape}: need the same number of rows")
    point = float(metric(y, s))
    reps = []
    rows = np.arange(y.shape[0])
    for w in resample_weights(y.shape[0], groups, n_boot, seed):
        for counts in w.astype(np.int64):
            idx = np.repeat(rows, counts)
            try:
                reps.append(float(metric(y[idx], s[idx])))
            except ValueError:
                reps.append(float("nan"))
    return _interval(point, np.asarray(reps), n_boot, alpha)


def bootstrap_paired_difference(
    y_true: Any,
    score_a: Any,
    score_b: Any,
    metric: str = "roc_auc",
    groups: Any = None,
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    threshold: float = 0.5,
) -> Interval:
    """Interval for metric(score_a) - metric(score_b) on the same images, each replicate
    resampling patients once for both models (so their correlation is kept).

    Use this rather than DeLong when patients contribute several films.

    Example:
        >>> d = bootstrap_paired_difference([0, 0, 1, 1], [.1, .2, .8, .9], [.1, .9, .8, .2], n_boot=100)
        >>> d.point
        0.5
    """
    _check(n_boot, alpha)
    y = as_binary_labels(y_true)
    needs_prob = metric in ("brier", "ece")
    sa = as_scores(score_a, y.size, name="score_a", probability=needs_prob)
    sb = as_scores(score_b, y.size, name="score_b", probability=needs_prob)
    names = (metric,)
    ones = np.ones((1, y.size))
    point = (weighted_binary_metrics(y, sa, ones, threshold, names)[metric]
             - weighted_binary_metrics(y, sb, ones, threshold, names)[metric])[0]
    reps = [
        weighted_binary_metrics(y, sa, w, threshold, names)[metric]
        - weighted_binary_metrics(y, sb, w, threshold, names)[metric]
        for w in resample_weights(y.size, groups, n_boot, seed)
    ]
    return _interval(point, np.concatenate(reps), n_boot, alpha)
