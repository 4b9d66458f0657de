"""Tests of medtl/stats/recalibrate.py: the K patients drawn and the site threshold refitted on
them, against answers known by construction."""

from __future__ import annotations

import numpy as np
import pytest

from medtl.stats.recalibrate import MIN_HELD_OUT, pick_patients, recalibrate_site


def _separable(n: int = 60, cut: float = 0.7, seed: int = 0):
    """Films whose classes are split exactly at ``cut``: negatives below, positives above."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    s = np.where(y == 1, rng.uniform(cut + 0.01, 1.0, n), rng.uniform(0.0, cut - 0.01, n))
    return y, s, np.array([f"P{i}" for i in range(n)], dtype=object)


def test_the_refitted_threshold_recovers_the_known_cut():
    y, s, g = _separable(cut=0.7)
    r = recalibrate_site("binary", ["n", "p"], y, s, g, k=30, rule="youden", seed=1)
    t = r.site.thresholds[0]
    # The fit films are split perfectly at 0.7, so Youden's cut lies between their highest
    # negative and lowest positive: near 0.7, and right for nearly every held-out film too.
    fit_neg, fit_pos = s[r.fit & (y == 0)].max(), s[r.fit & (y == 1)].min()
    assert fit_neg < t <= fit_pos and 0.69 < t < 0.8
    held = r.site.decide(s[r.held_out])[:, 0]
    assert (held == y[r.held_out]).mean() > 0.9
    assert r.k == 30 and r.fit.sum() == 30 and r.held_out.sum() == 30 and not (r.fit & r.held_out).any()
    assert r.site.extra["site"] == {"k": 30, "n_films": 30, "seed": 1}


def test_a_fixed_rule_is_refitted_by_youden():
    """fixed:0.5 (the default) has nothing to refit: the site cut is Youden's on the K patients,
    and the site file says which rule the run had."""
    y, s, g = _separable(cut=0.7)
    r = recalibrate_site("binary", ["n", "p"], y, s, g, k=30, rule="fixed:0.5", seed=1)
    same = recalibrate_site("binary", ["n", "p"], y, s, g, k=30, rule="youden", seed=1)
    assert r.site.rule == "youden" and r.site.thresholds == same.site.thresholds
    assert 0.69 < r.site.thresholds[0] < 0.8
    assert r.site.extra["site"] == {"k": 30, "n_films": 30, "seed": 1, "rule_from": "fixed:0.5"}


def test_a_fixed_probability_rule_and_a_calibrator_on_top():
    y, s, g = _separable(n=80, cut=0.3)
    r = recalibrate_site("binary", ["n", "p"], y, s, g, k=40, rule="calibrated:0.5", calibration="platt")
    # Platt on the run's scores: the site's P = 0.5 cut lands between the classes at 0.3.
    cal = r.site.calibrate(s)[:, 0]
    assert np.all(np.diff(cal[np.argsort(s)]) >= 0)  # increasing: the ranking is kept
    assert r.site.thresholds == [0.5]
    assert 0.2 < r.site.raw_thresholds[0] < 0.4


def test_patients_are_drawn_whole_stratified_and_seeded():
    y = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0] * 3)
    g = np.repeat([f"P{i}" for i in range(15)], 2)  # two films per patient; patients 0, 5, 10 positive
    m = pick_patients(y, g, k=5, seed=3)
    chosen = set(g[m])
    assert len(chosen) == 5 and all(m[g == p].all() for p in chosen)  # whole patients
    assert any(y[g == p].max() for p in chosen) and not all(y[g == p].max() for p in chosen)
    assert (pick_patients(y, g, k=5, seed=3) == m).all()
    # a rare class still gets one patient at K = 2
    assert y[pick_patients(y, g, k=2, seed=0)].max() == 1


@pytest.mark.parametrize("k, match", [(51, "at least 10 must be held out"), (1, "between 2 and")])
def test_k_out_of_range_names_the_option(k, match):
    y, s, g = _separable(n=60)
    with pytest.raises(ValueError, match=f"--recalibrate {k}: .*{match}"):
        recalibrate_site("binary", ["n", "p"], y, s, g, k=k)
    assert MIN_HELD_OUT == 10


def test_multiclass_is_refused():
    with pytest.raises(ValueError, match="--recalibrate: a multiclass run"):
        recalibrate_site("multiclass", ["a", "b", "c"], np.eye(3), np.eye(3), ["a", "b", "c"], k=2)
