"""medtl.stats.compare: DeLong's test against sklearn, a brute-force implementation and a
published example."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medtl.stats.compare import delong_auc_variance, delong_ci, delong_test


def _brute_force_delong(y, scores):
    """Independent O(N+ x N-) structural components (DeLong et al. 1988, eqs. 2-4)."""
    y = np.asarray(y)
    aucs, v10s, v01s = [], [], []
    for s in scores:
        x, z = s[y == 1][:, None], s[y == 0][None, :]
        psi = (x > z) + 0.5 * (x == z)  # kernel: 1 if positive outscores negative, 1/2 on ties
        aucs.append(psi.mean())
        v10s.append(psi.mean(axis=1))
        v01s.append(psi.mean(axis=0))
    m, n = len(v10s[0]), len(v01s[0])
    k = len(scores)
    s10 = np.zeros((k, k))
    s01 = np.zeros((k, k))
    for i in range(k):
        for j in range(k):
            s10[i, j] = np.sum((v10s[i] - aucs[i]) * (v10s[j] - aucs[j])) / (m - 1)
            s01[i, j] = np.sum((v01s[i] - aucs[i]) * (v01s[j] - aucs[j])) / (n - 1)
    return np.array(aucs), s10 / m + s01 / n


@pytest.mark.parametrize("seed", [0, 1])
def test_paired_test_matches_brute_force_and_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random(150) < 0.35).astype(int)
    a = np.round(rng.normal(size=150) + 1.0 * y, 1)  # rounding makes ties
    b = np.round(0.6 * a + rng.normal(size=150) * 0.8 + 0.3 * y, 1)  # correlated with a
    r = delong_test(y, a, b)
    aucs, cov = _brute_force_delong(y, [a, b])
    assert r["auc_a"] == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert r["auc_b"] == pytest.approx(roc_auc_score(y, b), abs=1e-12)
    assert r["auc_a"] == pytest.approx(aucs[0]) and r["auc_b"] == pytest.approx(aucs[1])
    var_diff = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    assert cov[0, 1] > 0  # the two scores really are correlated, so the covariance term matters
    assert r["se"] == pytest.approx(np.sqrt(var_diff), rel=1e-10)
    assert r["z"] == pytest.approx((aucs[0] - aucs[1]) / np.sqrt(var_diff), rel=1e-10)
    assert r["ci_low"] == pytest.approx(r["diff"] - 1.959963984540054 * r["se"])
    assert delong_auc_variance(y, b)[1] == pytest.approx(cov[1, 1], rel=1e-10)


def test_hanley_mcneil_ct_example():
    # Hanley & McNeil (1982, Radiology 143:29, table 1): 109 CT images rated 1-5 by a
    # radiologist; 58 normal, 51 abnormal. The paper's area is 0.893. Stata's roctab (DeLong
    # standard error by default) reports for these data: area 0.8932, SE 0.0307, 95% CI
    # 0.83295 to 0.95339.
    normal = np.repeat([1, 2, 3, 4, 5], [33, 6, 6, 11, 2])
    abnormal = np.repeat([1, 2, 3, 4, 5], [3, 2, 2, 11, 33])
    y = np.r_[np.zeros(58, int), np.ones(51, int)]
    rating = np.r_[normal, abnormal]
    auc, var = delong_auc_variance(y, rating)
    assert round(auc, 3) == 0.893
    assert round(auc, 4) == 0.8932
    assert round(np.sqrt(var), 4) == 0.0307
    _, low, high = delong_ci(y, rating)
    assert (round(low, 5), round(high, 5)) == (0.83295, 0.95339)


def test_identical_models_and_degenerate_input():
    y = [0, 0, 1, 1, 0, 1]
    s = [0.1, 0.5, 0.4, 0.9, 0.3, 0.7]
    r = delong_test(y, s, s)
    assert (r["diff"], r["se"], r["z"], r["p_value"]) == (0.0, 0.0, 0.0, 1.0)
    perfect = delong_test([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], [0.2, 0.1, 0.9, 0.8])
    assert perfect["auc_a"] == perfect["auc_b"] == 1.0 and perfect["p_value"] == 1.0
    with pytest.raises(ValueError, match="0 positive and 3 negative"):
        delong_test([0, 0, 0], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])
    with pytest.raises(ValueError, match="score_b"):
        delong_test([0, 1], [0.1, 0.2], [0.3])
    assert delong_ci([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == (1.0, 1.0, 1.0)


def test_p_values_are_calibrated_under_the_null():
    # Two equally good, correlated models: about 5% of tests should reject at 0.05.
    rng = np.random.default_rng(11)
    p_values = []
    for _ in range(400):
        y = np.r_[np.ones(40, int), np.zeros(60, int)]
        latent = rng.normal(size=100) + 0.8 * y
        a = latent + rng.normal(size=100)
        b = latent + rng.normal(size=100)
        p_values.append(delong_test(y, a, b)["p_value"])
    rejection = np.mean(np.array(p_values) < 0.05)
    assert 0.02 <= rejection <= 0.09, rejection


def test_detects_a_real_difference():
    rng = np.random.default_rng(12)
    y = np.r_[np.ones(100, int), np.zeros(200, int)]
    good = rng.normal(size=300) + 1.5 * y
    bad = good + rng.normal(0, 2.0, 300)
    r = delong_test(y, good, bad)
    assert r["diff"] > 0 and r["p_value"] < 0.01 and r["ci_low"] > 0
    assert (r["n"], r["n_pos"]) == (300, 100)
