"""Local recalibration: refit a run's threshold (and optionally a calibrator) on K patients of
a new site, leaving the site's other patients for an honest before/after comparison.

The site post-processing is a :class:`~medtl.stats.postprocess.PostProcess` fitted on the
run's own output (its decision-scale ensemble scores), so it sits on top of the run unchanged:
``site.calibrate(run_scores)`` then ``site.decide(...)``. The K patients are drawn stratified
by whether the patient has a positive film (seeded), so a small K still holds both classes.

Example:
    >>> y = np.array([0] * 40 + [1] * 40); s = np.r_[np.linspace(0, .6, 40), np.linspace(.5, 1, 40)]
    >>> r = recalibrate_site("binary", ["n", "p"], y, s, np.arange(80).astype(str), k=30, rule="youden")
    >>> r.site.thresholds[0] > 0.4, int(r.fit.sum()), int(r.held_out.sum())
    (True, 30, 50)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from medtl.stats.postprocess import PostProcess

__all__ = ["Recalibration", "recalibrate_site", "pick_patients", "MIN_HELD_OUT"]

MIN_HELD_OUT = 10
"""Patients that must remain after the K fit patients, for before/after figures worth reading."""


@dataclass
class Recalibration:
    """The outcome of :func:`recalibrate_site`.

    Attributes:
        site: the site post-processing (on top of the run's decision-scale scores).
        fit: (N,) bool, the films of the K patients the site post-processing was fitted on.
        held_out: (N,) bool, the films of the other patients (to evaluate on).
        k: patients fitted on.
    """

    site: PostProcess
    fit: np.ndarray
    held_out: np.ndarray
    k: int


def pick_patients(y: Any, groups: Sequence[Any], k: int, seed: int = 0) -> np.ndarray:
    """(N,) bool mask of the films of ``k`` patients drawn stratified by whether the patient has
    a positive film (any label for multilabel), with at least one patient of each kind when
    both exist and ``k >= 2``.

    Args:
        y: targets (N,) or (N, L), 0/1.
        groups: patient id per film.
        k: patients to draw.
        seed: draw seed.

    Example:
        >>> pick_patients([0, 0, 1, 1], ["a", "a", "b", "c"], k=2, seed=0).sum() >= 2
        True
    """
    yy = np.asarray(y, dtype=np.float64)
    pos_film = yy.reshape(len(yy), -1).max(axis=1) > 0
    g = pd.Series(np.asarray(groups, dtype=object)).astype(str)
    pos_patient = pd.Series(pos_film).groupby(g.to_numpy()).max()
    rng = np.random.default_rng(seed)
    pos = rng.permutation(pos_patient.index[pos_patient.to_numpy()].to_numpy())
    neg = rng.permutation(pos_patient.index[~pos_patient.to_numpy()].to_numpy())
    n_pos = int(round(k * len(pos) / max(len(pos) + len(neg), 1)))
    if k >= 2 and len(pos) and len(neg):
        n_pos = min(max(n_pos, 1), k - 1)  # both classes, however rare one is
    n_pos = min(n_pos, len(pos))
    chosen = set(pos[:n_pos]) | set(neg[:k - n_pos])
    return g.isin(chosen).to_numpy()


def recalibrate_site(task: str, classes: Sequence[str], y: Any, s: Any, groups: Sequence[Any], k: int,
                     rule: str = "youden", calibration: str = "none", seed: int = 0) -> Recalibration:
    """Fit a site post-processing on the films of ``k`` local patients.

    Args:
        task: binary or multilabel (multiclass decides by arg-max: there is no threshold).
        classes: the run's classes (labels).
        y: targets (N,) or (N, L), 0/1.
        s: the run's decision-scale scores (its ensemble output), same shape.
        groups: patient id per film.
        k: patients to fit on; at least :data:`MIN_HELD_OUT` must remain.
        rule: the threshold rule (the run's ``evaluate.threshold``). A ``fixed:T`` rule
            has nothing to refit, so the site's threshold is then chosen by ``youden`` on the
            K patients (``site.extra["site"]["rule_from"]`` records the run's rule).
        calibration: none, platt or temperature, fitted on the run's scores.
        seed: which patients are drawn.

    Raises:
        ValueError: a multiclass task, K out of range, or K patients lacking a class.

    Example:
        >>> r = recalibrate_site("binary", ["n", "p"], y, s, patients, k=20)
        >>> r.site.decide(r.site.calibrate(s[r.held_out]))
    """
    if task == "multiclass":
        raise ValueError("--recalibrate: a multiclass run decides by arg-max and has no threshold to refit; "
                         "use it with a binary or multilabel run")
    g = np.asarray(groups, dtype=object).astype(str)
    n_patients = int(pd.Series(g).nunique())
    if not 2 <= k <= n_patients - MIN_HELD_OUT:
        raise ValueError(f"--recalibrate {k}: the set has {n_patients} patients and at least {MIN_HELD_OUT} must be "
                         f"held out; use K between 2 and {max(n_patients - MIN_HELD_OUT, 2)} or label more patients")
    yy = np.asarray(y, dtype=np.float64).reshape(len(g), -1)
    fit = pick_patients(yy, g, k, seed)
    for j in range(yy.shape[1]):
        if np.unique(yy[fit, j]).size < 2:
            name = classes[1] if task == "binary" else classes[j]
            raise ValueError(f"--recalibrate {k}: the {k} patients drawn lack a class of {name!r} "
                             "(a threshold needs both); use a larger K")
    site_rule = "youden" if rule.strip().lower().startswith("fixed:") else rule
    site = PostProcess.fit(task, list(classes), yy[fit], np.asarray(s, dtype=np.float64).reshape(len(g), -1)[fit],
                           rule=site_rule, calibration=calibration, groups=g[fit], n_boot=0, seed=seed)
    site.extra["site"] = {"k": int(k), "n_films": int(fit.sum()), "seed": int(seed)}
    if site_rule != rule:
        site.extra["site"]["rule_from"] = rule
    return Recalibration(site=site, fit=fit, held_out=~fit, k=int(k))
