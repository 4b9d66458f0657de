"""medtl.stats.bootstrap: exact resampling arithmetic, coverage by simulation, grouping."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import accuracy_score, roc_auc_score

from medtl.stats.bootstrap import (
    Interval,
    bootstrap_ci,
    bootstrap_metrics,
    bootstrap_paired_difference,
    few_patients_warning,
    jackknife_weights,
    resample_weights,
)
from medtl.stats.metrics import BINARY_METRICS, binary_metrics, weighted_binary_metrics


def _binormal(rng, n_pos, n_neg, d):
    y = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    return y, np.r_[rng.normal(d, 1.0, n_pos), rng.normal(0.0, 1.0, n_neg)]


def test_image_weights_are_multinomial_counts():
    rows = np.concatenate(list(resample_weights(7, n_boot=50, seed=1)))
    assert rows.shape == (50, 7)
    assert np.all(rows.sum(axis=1) == 7) and np.all(rows == np.round(rows))


def test_group_weights_take_whole_patients():
    groups = np.array(["p1", "p1", "p2", "p3", "p3", "p3"])
    for rows in resample_weights(6, groups, n_boot=40, seed=2):
        for g in np.unique(groups):
            cols = rows[:, groups == g]
            assert np.all(cols == cols[:, :1])  # all films of a patient share one multiplicity
        patient_counts = rows[:, [0, 2, 3]]
        assert np.all(patient_counts.sum(axis=1) == 3)  # 3 patients drawn per replicate


def test_weighted_metrics_equal_metrics_on_materialised_resamples():
    rng = np.random.default_rng(3)
    y = (rng.random(60) < 0.4).astype(np.int8)
    s = np.round(np.clip(0.5 + 0.25 * rng.normal(size=60) + 0.2 * y, 0, 1), 2)
    w = next(resample_weights(60, np.arange(60) // 3, n_boot=5, seed=4))
    got = weighted_binary_metrics(y, s, w, threshold=0.55)
    for b in range(5):
        idx = np.repeat(np.arange(60), w[b].astype(int))
        want = binary_metrics(y[idx], s[idx], threshold=0.55)
        for name in BINARY_METRICS:
            np.testing.assert_allclose(got[name][b], want[name], rtol=1e-12, atol=1e-12, err_msg=name)


def test_vectorised_auc_interval_equals_sklearn_loop():
    rng = np.random.default_rng(5)
    y, s = _binormal(rng, 40, 80, 1.0)
    fast = bootstrap_ci(y, s, "roc_auc", n_boot=300, seed=7)
    slow = bootstrap_ci(y, s, roc_auc_score, n_boot=300, seed=7)  # same replicates, sklearn each time
    assert tuple(fast) == pytest.approx(tuple(slow), abs=1e-12)
    assert fast.point == pytest.approx(roc_auc_score(y, s))


def test_interval_covers_true_auc_about_95_percent():
    # N(d, 1) vs N(0, 1) has AUC = Phi(d / sqrt(2)).
    d = 1.0
    true_auc = norm.cdf(d / np.sqrt(2.0))
    rng = np.random.default_rng(2024)
    hits = []
    for i in range(200):
        y, s = _binormal(rng, 50, 50, d)
        _, low, high = bootstrap_ci(y, s, "roc_auc", n_boot=300, seed=i)
        hits.append(low <= true_auc <= high)
    coverage = np.mean(hits)
    assert 0.90 <= coverage <= 0.99, coverage


def test_bca_covers_where_the_percentile_interval_under_covers():
    # 30 patients a class, AUC 0.92 (d = 2): the AUC's bootstrap distribution is skewed and
    # biased low, and the percentile interval misses the true value too often.
    d = 2.0
    true_auc = norm.cdf(d / np.sqrt(2.0))
    rng = np.random.default_rng(11)
    hits = {"bca": [], "percentile": []}
    for i in range(400):
        y, s = _binormal(rng, 30, 30, d)
        for method in hits:
            ci = bootstrap_ci(y, s, "roc_auc", n_boot=1000, seed=i, method=method)
            assert ci.method == method
            hits[method].append(ci.low <= true_auc <= ci.high)
    bca, pct = np.mean(hits["bca"]), np.mean(hits["percentile"])
    assert 0.93 <= bca <= 0.98, bca  # this seed: BCa 0.940, percentile 0.920
    assert pct < bca, (pct, bca)


def test_intervals_with_five_patients_a_class_under_cover_hence_the_warning():
    """Why few_patients_warning exists: at 5 patients a class the BCa interval misses the true
    AUC far more often than 5% (simulated 0.82), at 10 a class it holds (0.95)."""
    d = norm.ppf(0.85) * np.sqrt(2.0)  # AUC 0.85
    rng = np.random.default_rng(0)
    coverage = {}
    for n in (5, 10):
        hits = []
        for i in range(150):
            y, s = _binormal(rng, n, n, d)
            ci = bootstrap_ci(y, s, "roc_auc", n_boot=500, seed=i)
            hits.append(ci.low <= 0.85 <= ci.high)
        coverage[n] = np.mean(hits)
    assert coverage[5] <= 0.88 and coverage[10] >= 0.91, coverage
    assert few_patients_warning(y[:10], None) is not None  # 5 a class
    assert few_patients_warning(np.r_[np.zeros(8), np.ones(8)], None) is None


def test_few_patients_warning_counts_patients_not_images():
    y = np.r_[np.ones(12), np.zeros(20)]
    groups = [f"p{i % 3}" for i in range(12)] + [f"n{i}" for i in range(20)]  # 12 films of 3 patients
    msg = few_patients_warning(y, groups, ["normal", "lesion"])
    assert msg.startswith("only 3 lesion patient(s): with fewer than 8 patients in a class")
    assert "\n" not in msg and "normal" not in msg
    assert few_patients_warning(y, None, ["normal", "lesion"]) is None  # 12 images = 12 patients
    labels = np.array([[1, 0]] * 10 + [[0, 1]] * 2 + [[0, 0]] * 10)
    msg = few_patients_warning(labels, None, ["effusion", "mass"])
    assert msg.startswith("only 2 patient(s) with mass:") and "effusion" not in msg


def test_bca_arithmetic_on_known_replicates():
    from medtl.stats.bootstrap import _interval

    reps = np.arange(1000) / 1000.0
    symmetric = np.array([-1.0, 0.0, 1.0, -2.0, 2.0])
    # No bias (the point is the replicates' median) and no skew: BCa is the percentile interval.
    plain = _interval(0.4995, reps, 1000, 0.05)
    same = _interval(0.4995, reps, 1000, 0.05, jack=symmetric)
    assert same.method == "bca" and plain.method == "percentile"
    assert (same.low, same.high) == pytest.approx((plain.low, plain.high), abs=1e-12)
    # A biased, skewed case against Efron's formulas written out here.
    jack = np.array([0.1, 0.2, 0.2, 0.3, 0.9])
    dev = jack.mean() - jack
    a = np.sum(dev**3) / (6 * np.sum(dev**2) ** 1.5)
    z0 = norm.ppf(np.mean(reps < 0.7005))  # no replicate ties with the point
    want = [norm.cdf(z0 + (z0 + z) / (1 - a * (z0 + z))) for z in norm.ppf([0.025, 0.975])]
    got = _interval(0.7005, reps, 1000, 0.05, jack=jack)
    assert (got.low, got.high) == pytest.approx(tuple(np.quantile(reps, want)), abs=1e-12)
    assert got.low > plain.low and got.high > plain.high  # shifted towards the biased-high point
    # Where the corrections are undefined it says so and falls back.
    assert _interval(float("nan"), reps, 1000, 0.05, jack=jack).method == "percentile"


def test_bca_matches_scipy_for_a_skewed_proportion():
    # Image-level resampling of accuracy (a proportion near 1, n = 40): scipy's BCa uses the same
    # jackknife and formulas, so the two agree up to Monte Carlo error.
    from scipy.stats import bootstrap

    y = np.r_[np.ones(20, int), np.zeros(20, int)]
    s = np.r_[np.full(18, 0.9), np.full(2, 0.1), np.full(19, 0.1), np.full(1, 0.9)]  # 37 of 40 right
    ours = bootstrap_ci(y, s, "accuracy", n_boot=20000, seed=1)
    correct = ((s >= 0.5) == (y == 1)).astype(float)
    ref = bootstrap(
        (correct,), np.mean, n_resamples=20000, method="BCa", random_state=np.random.default_rng(2),
    ).confidence_interval
    assert ours.point == pytest.approx(37 / 40)
    assert ours.low == pytest.approx(ref.low, abs=0.0126) and ours.high == pytest.approx(ref.high, abs=0.0126)
    pct = bootstrap_ci(y, s, "accuracy", n_boot=20000, seed=1, method="percentile")
    assert ours.low < pct.low  # BCa reaches further down from a proportion near 1


def test_jackknife_blocks_leave_out_whole_patients():
    groups = np.repeat(np.arange(7), 3)
    rows = np.concatenate(list(jackknife_weights(21, groups)))
    assert rows.shape == (7, 21)
    for row in rows:  # each row drops exactly one patient, with all of its films
        dropped = np.unique(groups[row == 0])
        assert dropped.size == 1 and np.all(row[groups == dropped[0]] == 0) and row.sum() == 18
    many = np.concatenate(list(jackknife_weights(3000, np.arange(3000) // 2)))
    assert many.shape == (500, 3000)  # at most 500 blocks of whole patients
    assert np.all(many.sum(axis=0) == 499)  # every film is left out exactly once
    with pytest.raises(ValueError, match="method"):
        bootstrap_ci([0, 1], [0.2, 0.8], method="student")


def test_patient_bootstrap_is_wider_when_films_are_correlated():
    # 80 patients x 5 films; films of a patient share a strong patient effect.
    rng = np.random.default_rng(6)
    n_pat, films = 80, 5
    pat_label = (np.arange(n_pat) < 30).astype(int)
    pat_effect = rng.normal(0.8 * pat_label, 1.0)
    groups = np.repeat(np.arange(n_pat), films)
    y = np.repeat(pat_label, films)
    s = np.repeat(pat_effect, films) + rng.normal(0.0, 0.2, n_pat * films)
    by_image = bootstrap_ci(y, s, "roc_auc", n_boot=500, seed=0)
    by_patient = bootstrap_ci(y, s, "roc_auc", groups=groups, n_boot=500, seed=0)
    assert by_patient.point == by_image.point
    assert (by_patient.high - by_patient.low) > 1.6 * (by_image.high - by_image.low)


def test_undefined_replicates_are_skipped_and_counted():
    # One positive patient among four: replicates without it have no AUC.
    y = [1, 1, 0, 0, 0, 0, 0, 0]
    s = [0.9, 0.8, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    groups = ["a", "a", "b", "b", "c", "c", "d", "d"]
    ci = bootstrap_ci(y, s, "roc_auc", groups=groups, n_boot=400, seed=3)
    w = np.concatenate(list(resample_weights(8, groups, 400, seed=3)))
    assert ci.n_skipped == int(np.sum(w[:, 0] == 0))  # replicates that missed patient "a"
    assert 0 < ci.n_skipped < 400 and ci.n_boot == 400
    assert ci.low == ci.high == ci.point == 1.0
    # With every replicate undefined the interval is nan, not an error.
    none = bootstrap_ci([0, 0, 0], [0.1, 0.2, 0.3], "roc_auc", n_boot=20)
    assert np.isnan(none.point) and np.isnan(none.low) and none.n_skipped == 20


def test_bootstrap_metrics_many_at_once():
    rng = np.random.default_rng(8)
    y, s = _binormal(rng, 60, 140, 1.2)
    p = 1 / (1 + np.exp(-s))
    cis = bootstrap_metrics(y, p, groups=np.arange(200) // 2, threshold=0.5, n_boot=300)
    point = binary_metrics(y, p, threshold=0.5)
    assert set(cis) == set(BINARY_METRICS)
    for name, ci in cis.items():
        assert ci.point == pytest.approx(point[name]), name
        assert ci.low <= ci.point <= ci.high, name
    assert json.loads(json.dumps(cis["f1"].to_dict()))["n_boot"] == 300
    # Same seed, same answer; different seed, different replicates.
    again = bootstrap_metrics(y, p, groups=np.arange(200) // 2, n_boot=300)
    assert again["roc_auc"] == cis["roc_auc"]
    assert bootstrap_metrics(y, p, n_boot=300, seed=1)["roc_auc"].low != cis["roc_auc"].low


def test_callable_metric_with_multiclass_scores():
    rng = np.random.default_rng(9)
    y = rng.integers(0, 3, 90)
    probs = rng.dirichlet([1, 1, 1], 90)
    probs[np.arange(90), y] += 0.3
    probs /= probs.sum(axis=1, keepdims=True)

    def acc(yy, pp):
        return accuracy_score(yy, pp.argmax(axis=1))

    point, low, high = bootstrap_ci(y, probs, acc, groups=np.arange(90) // 3, n_boot=200)
    assert point == pytest.approx(acc(y, probs)) and low < point < high


def test_paired_difference():
    rng = np.random.default_rng(10)
    y, s = _binormal(rng, 50, 100, 1.0)
    worse = s + rng.normal(0, 1.5, s.size)
    d = bootstrap_paired_difference(y, s, worse, n_boot=300, groups=np.arange(150) // 3)
    assert d.point == pytest.approx(roc_auc_score(y, s) - roc_auc_score(y, worse))
    assert d.low > 0  # the noisier copy is clearly worse
    same = bootstrap_paired_difference(y, s, s, n_boot=50)
    assert (same.point, same.low, same.high) == (0.0, 0.0, 0.0)


def test_argument_errors():
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci([0, 1], [0.1, 0.9], n_boot=0)
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci([0, 1], [0.1, 0.9], alpha=1.5)
    with pytest.raises(ValueError, match="one patient id per image"):
        bootstrap_ci([0, 1], [0.1, 0.9], groups=["a"])
    with pytest.raises(ValueError, match="missing patient id at index 1"):
        bootstrap_ci([0, 1], [0.1, 0.9], groups=["a", None])
    with pytest.raises(ValueError, match="unknown metric"):
        bootstrap_ci([0, 1], [0.1, 0.9], "auroc")
    assert isinstance(bootstrap_ci([0, 1], [0.1, 0.9], n_boot=5), Interval)


def test_replicates_with_one_class_are_skipped_for_every_metric():
    # Four lesion patients among twenty, one false positive: about 1% of patient resamples draw
    # no lesion, and their PPV is 0. BCa's lower limit reached them and showed [0.000, 1.000].
    groups = np.repeat(np.arange(20), 2)
    y = (groups < 4).astype(int)
    s = np.where(y == 1, 0.9, 0.1)
    s[10] = 0.8  # patient 5's first film: the false positive
    ci = bootstrap_metrics(y, s, groups=groups, threshold=0.5, metrics=("ppv", "specificity"),
                           n_boot=2000, seed=0)
    w = np.concatenate(list(resample_weights(y.size, groups, 2000, seed=0)))
    n_pos = w @ y
    one_class = int(np.sum((n_pos == 0) | (n_pos == w.sum(axis=1))))
    assert one_class > 0
    # Specificity is defined without a lesion, but those replicates are left out of it too.
    assert ci["ppv"].n_skipped == ci["specificity"].n_skipped == one_class
    assert ci["ppv"].point == pytest.approx(8 / 9)
    assert ci["ppv"].low >= 0.3  # 0.40; 0.000 with the one-class replicates in
    # With only one class in the data nothing more is skipped than the metric leaves undefined.
    neg = bootstrap_metrics(np.zeros(10, int), np.linspace(0, 1, 10), metrics=("specificity",), n_boot=50)
    assert neg["specificity"].n_skipped == 0
