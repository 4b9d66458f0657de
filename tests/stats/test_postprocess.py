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
