"""TF-free arithmetic of heat-map faithfulness: salience orders, deletion/insertion masks, the
area under a curve, and bootstrap intervals of per-film means.

A map is *faithful* when the pixels it ranks highest are the ones the model's score depends
on: deleting them first makes the score fall fast (a small area under the deletion curve), and
inserting them first into a blurred film makes it rise fast (a large area under the insertion
curve) (Petsiuk et al. 2018, RISE). The model calls live in :mod:`medtl.explain.faithfulness`.

Example:
    >>> import numpy as np
    >>> order = salience_ranks(np.array([[0.9, 0.1], [0.5, 0.0]]), seed=0)
    >>> order.tolist()
    [[0, 2], [1, 3]]
    >>> float(curve_auc([1.0, 0.5, 0.0]))
    0.5
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medtl.stats.bootstrap import Interval, resample_weights

__all__ = ["salience_ranks", "step_masks", "curve_auc", "mean_interval"]


def salience_ranks(heat: np.ndarray, seed: int | np.random.Generator = 0) -> np.ndarray:
    """Each pixel's place (0 = most salient) when the pixels are sorted by ``heat``, descending.

    Ties are broken at random: a Grad-CAM map is 0 over much of the film, and a fixed order
    there (raster order, say) would delete the top rows first and bias the curve.

    Args:
        heat: (H, W) map, any scale.
        seed: seed or numpy Generator for the tie-breaking.

    Returns:
        int64 (H, W) ranks, a permutation of 0 .. H*W - 1.

    Example:
        >>> salience_ranks(np.array([[1.0, 3.0, 2.0]])).tolist()
        [[2, 0, 1]]
    """
    h = np.asarray(heat, np.float64)
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(h.size), -h.ravel()))  # last key sorts first
    ranks = np.empty(h.size, np.int64)
    ranks[order] = np.arange(h.size)
    return ranks.reshape(h.shape)


def step_masks(ranks: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Boolean (S, H, W) masks: mask s holds the ``fractions[s]`` most salient pixels.

    Example:
        >>> step_masks(np.array([[2, 0, 1]]), np.array([0.0, 0.5, 1.0])).sum(axis=(1, 2)).tolist()
        [0, 2, 3]
    """
    r = np.asarray(ranks)
    counts = np.round(np.asarray(fractions, np.float64) * r.size).astype(np.int64)
    return r[None] < counts.reshape(-1, *([1] * r.ndim))


def curve_auc(scores: Any, fractions: Any = None) -> np.ndarray:
    """Area under score-against-fraction curves (trapezoids), along the last axis.

    Args:
        scores: (..., S) scores at the S fractions.
        fractions: (S,) fractions in [0, 1]; default S evenly spaced from 0 to 1.

    Example:
        >>> curve_auc([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]).tolist()
        [1.0, 0.25]
    """
    s = np.asarray(scores, np.float64)
    f = np.linspace(0.0, 1.0, s.shape[-1]) if fractions is None else np.asarray(fractions, np.float64)
    if f.shape != s.shape[-1:]:
        raise ValueError(f"fractions {f.shape} and scores {s.shape}: need one fraction per step")
    return np.sum((s[..., 1:] + s[..., :-1]) / 2.0 * np.diff(f), axis=-1)


def mean_interval(values: Any, groups: Any = None, n_boot: int = 1000, alpha: float = 0.05,
                  seed: int = 0) -> Interval:
    """The mean of per-film values with a percentile bootstrap interval over films (patients
    when ``groups`` gives one id per film, so a patient's films are drawn together).

    For a paired comparison pass the per-film differences (method minus random map).

    Example:
        >>> iv = mean_interval([0.1, 0.2, 0.3, 0.4], n_boot=200)
        >>> round(iv.point, 2), iv.low <= iv.point <= iv.high
        (0.25, True)
    """
    v = np.asarray(values, np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"values: expected a non-empty 1-D array, got shape {v.shape}")
    if n_boot < 1 or not 0.0 < alpha < 1.0:
        raise ValueError(f"n_boot={n_boot}, alpha={alpha}: need n_boot >= 1 and 0 < alpha < 1")
    reps = np.concatenate([(w @ v) / w.sum(axis=1) for w in resample_weights(v.size, groups, n_boot, seed)])
    low, high = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return Interval(float(v.mean()), float(low), float(high), n_boot, 0, alpha, "percentile")
