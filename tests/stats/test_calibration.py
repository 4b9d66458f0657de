"""medtl.stats.calibration: recovery of known miscalibration, NLL, serialisation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import expit, softmax
from sklearn.metrics import log_loss, roc_auc_score

from medtl.stats.calibration import (
    PlattScaling,
    TemperatureScaling,
    calibrator_from_dict,
    fit_platt,
    fit_temperature,
)


def _overconfident_binary(n=20000, temperature=2.0, seed=0):
    """Labels drawn from sigmoid(z); the 'model' reports sigmoid(T z), T times too sharp."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.5, n)
    y = (rng.random(n) < expit(z)).astype(int)
    return y, expit(temperature * z), temperature * z


def test_temperature_recovers_known_binary_temperature():
    y, p, logits = _overconfident_binary()
    cal = fit_temperature(y, p)
    assert cal.temperature == pytest.approx(2.0, rel=0.10)
    assert fit_temperature(y, logits, input="logit").temperature == pytest.approx(cal.temperature, rel=1e-3)
    q = cal.apply(p)
    assert log_loss(y, q) < log_loss(y, p)
    assert roc_auc_score(y, q) == pytest.approx(roc_auc_score(y, p))  # ranking kept


def test_temperature_recovers_known_multiclass_temperature():
    rng = np.random.default_rng(1)
    z = rng.normal(0.0, 1.5, (20000, 3))
    u = rng.random((z.shape[0], 1))
    y = np.minimum((u > np.cumsum(softmax(z, axis=1), axis=1)).sum(axis=1), 2)  # draw from softmax(z)
    p = softmax(2.0 * z, axis=1)
    cal = fit_temperature(y, p)
    assert cal.temperature == pytest.approx(2.0, rel=0.10)
    q = cal.apply(p)
    assert q.shape == p.shape and np.allclose(q.sum(axis=1), 1.0)
    assert log_loss(y, q) < log_loss(y, p)
    assert fit_temperature(np.eye(3)[y], p).temperature == pytest.approx(cal.temperature)  # one-hot labels


def test_platt_recovers_slope_and_intercept_and_reduces_nll():
    rng = np.random.default_rng(2)
    z = rng.normal(0.0, 2.0, 40000)
    y = (rng.random(z.size) < expit(0.5 * z - 1.0)).astype(int)
    p = expit(z)  # the model's logit is z, the truth is 0.5 z - 1
    val, test = slice(0, 20000), slice(20000, None)
    cal = fit_platt(y[val], p[val])
    assert cal.slope == pytest.approx(0.5, abs=0.05)
    assert cal.intercept == pytest.approx(-1.0, abs=0.1)
    assert log_loss(y[test], cal.apply(p[test])) < log_loss(y[test], p[test])  # on held-out data


def test_serialisation_round_trip_through_json():
    y, p, _ = _overconfident_binary(n=2000)
    for cal in (fit_temperature(y, p), fit_platt(y, p)):
        back = calibrator_from_dict(json.loads(json.dumps(cal.to_dict())))
        assert back == cal and type(back) is type(cal)
        np.testing.assert_array_equal(back.apply(p), cal.apply(p))
    assert TemperatureScaling.from_dict({"method": "temperature", "temperature": 1.5}).input == "probability"
    with pytest.raises(ValueError, match="method 'isotonic' is unknown"):
        calibrator_from_dict({"method": "isotonic"})
    with pytest.raises(ValueError, match="expected 'platt'"):
        PlattScaling.from_dict({"method": "temperature", "temperature": 2.0})


def test_shapes_and_saturated_probabilities():
    cal = TemperatureScaling(2.0)
    out = cal.apply(np.array([[0.0], [0.5], [1.0]], dtype=np.float32))  # (N, 1), saturated ends
    assert out.shape == (3, 1) and np.all(np.isfinite(out))
    assert out[1, 0] == pytest.approx(0.5) and 0.99 < out[2, 0] < 1.0
    # Temperature 1 on logits is the plain sigmoid.
    assert TemperatureScaling(1.0, input="logit").apply([0.0, 2.0]) == pytest.approx(expit([0.0, 2.0]))


def test_errors_and_warnings():
    with pytest.raises(ValueError, match="input='logit'"):
        fit_temperature([0, 1], [-1.0, 3.0])
    with pytest.raises(ValueError, match="binary-only"):
        fit_platt([0, 1, 2], softmax(np.eye(3), axis=1))
    with pytest.raises(ValueError, match="temperature: invalid value"):
        TemperatureScaling(0.0)
    with pytest.raises(ValueError, match="3 labels but scores have 2"):
        fit_temperature([0, 1, 1], [0.2, 0.7])
    # Perfectly separated validation data push T to its bound: said out loud.
    with pytest.warns(RuntimeWarning, match="search bound"):
        fit_temperature([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    # Platt's smoothed targets keep the fit finite on the same data.
    cal = fit_platt([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert np.isfinite(cal.slope) and 0.0 < cal.apply([0.5])[0] < 1.0
