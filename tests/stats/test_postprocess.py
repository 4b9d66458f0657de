"""Tests of medtl/evaluate/postprocess.py: thresholds and calibrators fitted on validation data."""

from __future__ import annotations

import numpy as np
import pytest

from medtl.stats import choose_threshold, fit_temperature
from medtl.stats.postprocess import PostProcess


def test_binary_threshold_and_round_trip():
    y = [0, 0, 1, 1]
    s = [0.1, 0.4, 0.35, 0.8]
    pp = PostProcess.fit("binary", ["n", "p"], y, s, rule="youden")
    # Midway (in logit space) between the scores .1 and .35 either side of the cut.
    assert pp.thresholds == pp.raw_thresholds == [pytest.approx(0.1965, abs=1e-4)]
    assert pp.decide([[0.19], [0.20]]).tolist() == [[0], [1]]
    again = PostProcess.from_dict(pp.to_dict())
    assert again == pp


def test_calibrated_threshold_is_chosen_on_calibrated_scores():
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.3).astype(int)
    s = np.clip(0.3 * y + 0.7 * rng.random(300), 0.01, 0.99)
    pp = PostProcess.fit("binary", ["n", "p"], y, s, rule="sensitivity:0.9", calibration="temperature")
    t = fit_temperature(y, s)
    cal = t.apply(s)
    assert pp.thresholds == [pytest.approx(choose_threshold(y, cal, "sensitivity:0.9"))]
    assert pp.raw_thresholds == [pytest.approx(choose_threshold(y, s, "sensitivity:0.9"))]
    # the same validation decisions on either scale (temperature keeps the order)
    assert (pp.decide(pp.calibrate(s)) == (s >= pp.raw_thresholds[0])[:, None]).all()


def test_platt_with_a_non_positive_slope_falls_back_to_temperature():
    # validation scores that run against the labels: Platt would flip the model's ranking
    y = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    s = np.array([0.9, 0.8, 0.7, 0.2, 0.3, 0.1, 0.6, 0.4])
    with pytest.warns(RuntimeWarning, match="slope"):
        pp = PostProcess.fit("binary", ["n", "p"], y, s, rule="fixed:0.5", calibration="platt")
    assert pp.calibrators[0]["method"] == "temperature"
    assert "invert" in pp.extra["warnings"][0]
    cal = pp.calibrate(s)[:, 0]
    assert (np.argsort(cal) == np.argsort(s)).all()


def test_multilabel_per_label_and_multiclass():
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    s = np.array([[0.9, 0.2], [0.3, 0.7], [0.6, 0.6], [0.1, 0.4]])
    pp = PostProcess.fit("multilabel", ["a", "b"], y, s, rule="youden")
    assert pp.thresholds == [pytest.approx(0.4450, abs=1e-4), pytest.approx(0.5)]
    assert pp.decide(s).tolist() == y.tolist()
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    onehot = np.eye(3)[[0, 1, 2]]
    mc = PostProcess.fit("multiclass", ["a", "b", "c"], onehot, probs, calibration="temperature")
    assert mc.thresholds is None and mc.rule is None
    assert mc.decide(mc.calibrate(probs)).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="platt is binary-only"):
        PostProcess.fit("multiclass", ["a", "b", "c"], onehot, probs, calibration="platt")


def test_validation_without_positives_names_the_problem():
    with pytest.raises(ValueError, match="validation split"):
        PostProcess.fit("binary", ["n", "p"], [0, 0, 0], [0.1, 0.2, 0.3], rule="youden")


# --- calibrated:P and the threshold intervals (issue 19) ---------------------------------------


def test_inverse_of_the_calibrators_known_answers():
    from scipy.special import expit, logit

    from medtl.stats import calibrator_from_dict
    from medtl.stats.postprocess import _inverse_at

    platt = {"method": "platt", "slope": 2.0, "intercept": 0.0, "input": "probability"}
    assert _inverse_at(platt, 0.5) == pytest.approx(0.5)  # 2 z + 0 = 0 at z = 0
    shifted = {"method": "platt", "slope": 2.0, "intercept": -1.0, "input": "probability"}
    assert _inverse_at(shifted, 0.5) == pytest.approx(expit(0.5))  # 2 z - 1 = 0 at z = 0.5
    temp = {"method": "temperature", "temperature": 2.0, "input": "probability"}
    assert _inverse_at(temp, 0.7) == pytest.approx(expit(2 * logit(0.7)))
    assert _inverse_at({**shifted, "input": "logit"}, 0.5) == pytest.approx(0.5)
    for cal in (platt, shifted, temp):  # the calibrator maps the raw threshold back to P
        for p in (0.1, 0.5, 0.9):
            assert calibrator_from_dict(cal).apply([_inverse_at(cal, p)])[0] == pytest.approx(p)


def test_calibrated_rule_cuts_calibrated_scores_at_p():
    rng = np.random.default_rng(7)
    y = (rng.random(200) < 0.3).astype(int)
    s = np.clip(0.25 * y + 0.75 * rng.random(200), 0.01, 0.99)
    pp = PostProcess.fit("binary", ["n", "p"], y, s, rule="calibrated:0.5", calibration="platt", n_boot=100)
    a, b = pp.calibrators[0]["slope"], pp.calibrators[0]["intercept"]
    assert pp.thresholds == [0.5]
    assert pp.raw_thresholds == [pytest.approx(1 / (1 + np.exp(b / a)))]  # logit(raw) = -b / a
    new = rng.random(500)
    assert (pp.decide(pp.calibrate(new))[:, 0] == (new >= pp.raw_thresholds[0])).all()
    # the interval comes from refitting Platt per replicate: it is not the point P alone
    (lo, hi), (rlo, rhi) = pp.threshold_ci[0], pp.raw_threshold_ci[0]
    assert lo < 0.5 < hi and rlo < pp.raw_thresholds[0] < rhi
    # without calibration calibrated:P is fixed:P
    none = PostProcess.fit("binary", ["n", "p"], y, s, rule="calibrated:0.3")
    assert none.thresholds == none.raw_thresholds == [0.3] and none.threshold_ci == [[0.3, 0.3]]


def test_threshold_interval_is_stored_on_both_scales():
    rng = np.random.default_rng(8)
    y = (rng.random(300) < 0.3).astype(int)
    s = np.clip(0.3 * y + 0.7 * rng.random(300), 0.01, 0.99)
    groups = np.arange(300) // 2
    pp = PostProcess.fit("binary", ["n", "p"], y, s, rule="youden-centre", calibration="temperature",
                         groups=groups, n_boot=300, seed=3)
    (lo, hi), (rlo, rhi) = pp.threshold_ci[0], pp.raw_threshold_ci[0]
    assert rlo <= pp.raw_thresholds[0] <= rhi and lo <= pp.thresholds[0] <= hi
    cal = fit_temperature(y, s)
    assert [lo, hi] == pytest.approx(cal.apply([rlo, rhi]).tolist())
    assert pp.extra["threshold_ci"] == {"n_boot": 300, "alpha": 0.05, "seed": 3, "unit": "patient",
                                        "interval": "percentile"}
    # JSON round trip, and the same seed gives the same interval
    import json

    assert PostProcess.from_dict(json.loads(json.dumps(pp.to_dict()))) == pp
    again = PostProcess.fit("binary", ["n", "p"], y, s, rule="youden-centre", calibration="temperature",
                            groups=groups, n_boot=300, seed=3)
    assert again.threshold_ci == pp.threshold_ci
    assert PostProcess.fit("binary", ["n", "p"], y, s, n_boot=0).threshold_ci is None


def test_old_postprocess_files_without_intervals_still_load():
    old = {"task": "binary", "classes": ["n", "p"], "rule": "youden", "calibration": "none",
           "thresholds": [0.4], "raw_thresholds": [0.4], "calibrators": None, "n_val": 10, "extra": {}}
    pp = PostProcess.from_dict(old)
    assert pp.threshold_ci is None and pp.raw_threshold_ci is None and pp.thresholds == [0.4]


def test_multiclass_has_no_threshold_interval():
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    mc = PostProcess.fit("multiclass", ["a", "b", "c"], np.eye(3), probs)
    assert mc.threshold_ci is None and mc.raw_threshold_ci is None
