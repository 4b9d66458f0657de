"""medtl.stats.metrics against scikit-learn and hand-worked cases."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from medtl.stats.metrics import (
    average_precision,
    binary_metrics,
    brier_score,
    expected_calibration_error,
    multiclass_metrics,
    multilabel_metrics,
    reliability_curve,
    roc_auc,
    summarize_folds,
)


def _random_binary(seed: int, n: int = 300):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    # Rounded to 2 decimals so that many scores tie, across and within classes.
    s = np.round(np.clip(0.5 + 0.2 * rng.normal(size=n) + 0.15 * y, 0, 1), 2)
    return y, s


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.5, 0.37])
def test_binary_metrics_match_sklearn(seed, threshold):
    y, s = _random_binary(seed)
    if seed == 2:
        threshold = float(s[7])  # a threshold equal to observed scores: ties count positive
    m = binary_metrics(y, s, threshold=threshold)
    pred = (s >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (tp, fp, tn, fn)
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert m["pr_auc"] == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["brier"] == pytest.approx(skm.brier_score_loss(y, s))
    assert m["sensitivity"] == pytest.approx(skm.recall_score(y, pred))
    assert m["specificity"] == pytest.approx(skm.recall_score(y, pred, pos_label=0))
    assert m["ppv"] == pytest.approx(skm.precision_score(y, pred))
    assert m["npv"] == pytest.approx(skm.precision_score(y, pred, pos_label=0))
    assert (m["n"], m["n_pos"], m["threshold"]) == (len(y), int(y.sum()), threshold)
    assert roc_auc(y, s) == m["roc_auc"] and average_precision(y, s) == m["pr_auc"]
    assert brier_score(y, s) == pytest.approx(m["brier"])


def test_binary_metrics_hand_worked_ten_images():
    # 4 positives, 6 negatives. At t = 0.5: TP = .95 .85 .65, FN = .35, FP = .75 .55, TN = 4.
    y = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    s = [0.95, 0.85, 0.65, 0.35, 0.75, 0.55, 0.45, 0.25, 0.15, 0.05]
    m = binary_metrics(y, s, threshold=0.5)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (3, 2, 4, 1)
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(4 / 6)
    assert m["ppv"] == pytest.approx(3 / 5)
    assert m["npv"] == pytest.approx(4 / 5)
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    # Positive-negative pairs won: .95 and .85 beat all 6, .65 beats 5, .35 beats 3 -> 20 of 24.
    assert m["roc_auc"] == pytest.approx(20 / 24)
    # Ranked: P P N P N N P -> precisions at the positives 1, 1, 3/4, 4/7.
    assert m["pr_auc"] == pytest.approx((1 + 1 + 3 / 4 + 4 / 7) / 4)
    # (1-s)^2 for positives: .0025+.0225+.1225+.4225; s^2 for negatives: .5625+.3025+.2025+.0625+.0225+.0025.
    assert m["brier"] == pytest.approx((0.57 + 1.155) / 10)
    # Each score sits alone in one of 10 bins, so ECE = mean |y - s|.
    assert m["ece"] == pytest.approx((0.05 + 0.15 + 0.35 + 0.65 + 0.75 + 0.55 + 0.45 + 0.25 + 0.15 + 0.05) / 10)


def test_ece_hand_worked_two_bins():
    # Bin (0, .5]: {.1 -> 0}, gap .1; bin (.5, 1]: {.7, .8, .9 -> 1, 1, 1}, gap 1 - .8 = .2.
    ece = expected_calibration_error([0, 1, 1, 1], [0.1, 0.7, 0.8, 0.9], n_bins=2)
    assert ece == pytest.approx(1 / 4 * 0.1 + 3 / 4 * 0.2)
    # A bin edge belongs to the lower bin: 0.5 falls in (0, .5] with 0.1.
    c = reliability_curve([0, 1, 1, 1], [0.1, 0.5, 0.8, 0.9], n_bins=2)
    assert c["count"].tolist() == [2, 2]
    assert c["mean_predicted"].tolist() == pytest.approx([0.3, 0.85])
    assert c["fraction_positive"].tolist() == pytest.approx([0.5, 1.0])
    assert expected_calibration_error([0, 1, 1, 1], [0.1, 0.5, 0.8, 0.9], n_bins=2) == pytest.approx(
        0.5 * 0.2 + 0.5 * 0.15
    )


def test_ece_quantile_hand_worked():
    # Quantile edges of [.1 .2 .3 .4] in 2 bins: 0.1, 0.25, 0.4 -> bins {.1, .2} and {.3, .4}.
    c = reliability_curve([0, 1, 1, 1], [0.1, 0.2, 0.3, 0.4], n_bins=2, strategy="quantile")
    assert c["count"].tolist() == [2, 2]
    ece = expected_calibration_error([0, 1, 1, 1], [0.1, 0.2, 0.3, 0.4], n_bins=2, strategy="quantile")
    assert ece == pytest.approx(0.5 * abs(0.5 - 0.15) + 0.5 * abs(1 - 0.35))


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_reliability_curve_matches_sklearn(strategy):
    y, s = _random_binary(3, n=500)
    s = np.clip(s + np.random.default_rng(9).normal(0, 0.01, s.size), 0, 1)
    c = reliability_curve(y, s, n_bins=8, strategy=strategy)
    prob_true, prob_pred = calibration_curve(y, s, n_bins=8, strategy=strategy)
    keep = c["count"] > 0
    np.testing.assert_allclose(c["fraction_positive"][keep], prob_true)
    np.testing.assert_allclose(c["mean_predicted"][keep], prob_pred)
    assert c["count"].sum() == len(y) and len(c["bin_edges"]) == 9
    expected = np.sum(c["count"][keep] / len(y) * np.abs(prob_true - prob_pred))
    assert expected_calibration_error(y, s, n_bins=8, strategy=strategy) == pytest.approx(expected)


def test_empty_bins_are_kept_as_nan():
    c = reliability_curve([0, 1], [0.05, 0.95], n_bins=4)
    assert c["count"].tolist() == [1, 0, 0, 1]
    assert np.isnan(c["mean_predicted"][1]) and np.isnan(c["fraction_positive"][2])


def test_degenerate_cases_are_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        neg_only = binary_metrics([0, 0, 0], [0.2, 0.6, 0.1])
        pos_only = binary_metrics([1, 1], [0.7, 0.9])
    assert np.isnan(neg_only["roc_auc"]) and np.isnan(neg_only["pr_auc"])
    assert np.isnan(neg_only["sensitivity"]) and np.isnan(neg_only["balanced_accuracy"])
    assert neg_only["specificity"] == pytest.approx(2 / 3)
    assert neg_only["ppv"] == 0.0  # one false positive, no true positive: defined, and 0
    assert np.isnan(pos_only["roc_auc"]) and np.isnan(pos_only["specificity"])
    assert np.isnan(pos_only["npv"])  # nothing predicted negative: 0/0
    assert pos_only["pr_auc"] == 1.0 and pos_only["sensitivity"] == 1.0
    # No positives and none predicted: F1 and PPV are 0/0.
    none = binary_metrics([0, 0], [0.1, 0.2])
    assert np.isnan(none["f1"]) and np.isnan(none["ppv"])


def test_input_validation_messages():
    with pytest.raises(ValueError, match="value 2 at index 1 is not 0 or 1"):
        binary_metrics([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        binary_metrics([0, 1], [-0.5, 2.0])
    with pytest.raises(ValueError, match=r"expected shape \(3,\)"):
        binary_metrics([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="non-finite"):
        binary_metrics([0, 1], [np.nan, 0.2])
    with pytest.raises(ValueError, match="empty"):
        binary_metrics([], [])
    # The pipeline's (N, 1) label and prediction shapes are accepted.
    m = binary_metrics(np.array([[0], [1]]), np.array([[0.2], [0.9]]))
    assert m["roc_auc"] == 1.0
    # AUC alone accepts any real scores (logits).
    assert roc_auc([0, 1], [-3.0, 5.0]) == 1.0


def test_multiclass_metrics_match_sklearn():
    rng = np.random.default_rng(4)
    n, k = 400, 3
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.2 * np.eye(k)[y]
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    names = ["normal", "bacterial", "viral"]
    m = multiclass_metrics(y, p, names)
    pred = p.argmax(axis=1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["brier"] == pytest.approx(skm.brier_score_loss(y, p))
    aucs = skm.roc_auc_score(y, p, multi_class="ovr", average=None)
    f1s = skm.f1_score(y, pred, average=None)
    recalls = skm.recall_score(y, pred, average=None)
    precisions = skm.precision_score(y, pred, average=None)
    for c, name in enumerate(names):
        pc = m["per_class"][name]
        assert pc["roc_auc"] == pytest.approx(aucs[c])
        assert pc["pr_auc"] == pytest.approx(skm.average_precision_score(y == c, p[:, c]))
        assert pc["f1"] == pytest.approx(f1s[c])
        assert pc["sensitivity"] == pytest.approx(recalls[c])
        assert pc["ppv"] == pytest.approx(precisions[c])
        assert pc["specificity"] == pytest.approx(skm.recall_score(y != c, pred != c))
        assert pc["n_pos"] == int(np.sum(y == c))
    assert m["macro"]["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert m["macro"]["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    # Top-label ECE equals the binary ECE of "was the arg-max right" against max probability.
    assert m["ece"] == pytest.approx(expected_calibration_error(pred == y, p.max(axis=1)))
    # One-hot labels give the same result.
    assert multiclass_metrics(np.eye(k)[y], p, names) == m


def test_multiclass_absent_class_makes_macro_nan():
    p = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    m = multiclass_metrics([0, 1, 0], p)
    assert np.isnan(m["per_class"]["class_2"]["roc_auc"])
    assert np.isnan(m["macro"]["roc_auc"]) and np.isnan(m["balanced_accuracy"])
    with pytest.raises(ValueError, match="sums to"):
        multiclass_metrics([0, 1], [[0.5, 0.6], [0.2, 0.8]])
    with pytest.raises(ValueError, match="integers in"):
        multiclass_metrics([0, 3], [[0.5, 0.5], [0.2, 0.8]])


def test_multilabel_metrics():
    rng = np.random.default_rng(5)
    y = (rng.random((200, 3)) < [0.2, 0.4, 0.5]).astype(int)
    p = np.clip(0.3 * y + rng.random((200, 3)) * 0.7, 0, 1)
    m = multilabel_metrics(y, p, ["a", "b", "c"], thresholds={"a": 0.4, "b": 0.5, "c": 0.6})
    for j, (name, t) in enumerate(zip("abc", (0.4, 0.5, 0.6))):
        assert m["per_label"][name] == binary_metrics(y[:, j], p[:, j], threshold=t)
    assert m["macro"]["roc_auc"] == pytest.approx(np.mean([skm.roc_auc_score(y[:, j], p[:, j]) for j in range(3)]))
    pred = (p >= [0.4, 0.5, 0.6]).astype(int)
    assert m["exact_match"] == pytest.approx(skm.accuracy_score(y, pred))  # subset accuracy
    assert m["n"] == 200
    with pytest.raises(ValueError, match="no threshold for label"):
        multilabel_metrics(y, p, ["a", "b", "c"], thresholds={"a": 0.5})
    with pytest.raises(ValueError, match="label 'b'"):
        multilabel_metrics(np.c_[y[:, :1], y[:, 1:2] * 2, y[:, 2:]], p, ["a", "b", "c"])


def test_summarize_folds_nested_and_nan():
    folds = [
        {"roc_auc": 0.8, "sensitivity": float("nan"), "macro": {"f1": 0.5}},
        {"roc_auc": 0.9, "sensitivity": 0.7, "macro": {"f1": 0.7}},
        {"roc_auc": 0.7, "sensitivity": 0.9, "macro": {"f1": 0.6}},
    ]
    s = summarize_folds(folds)
    assert s["roc_auc"]["mean"] == pytest.approx(0.8)
    assert s["roc_auc"]["std"] == pytest.approx(np.std([0.8, 0.9, 0.7], ddof=1))
    assert s["roc_auc"]["n"] == 3
    sd = np.std([0.7, 0.9], ddof=1)
    assert s["sensitivity"] == {"mean": pytest.approx(0.8), "std": pytest.approx(sd), "n": 2}
    assert s["macro"]["f1"]["mean"] == pytest.approx(0.6)
    one = summarize_folds([{"a": 1}])
    assert one["a"]["mean"] == 1 and np.isnan(one["a"]["std"])
    with pytest.raises(ValueError, match="fold 1: keys"):
        summarize_folds([{"a": 1}, {"b": 1}])
    with pytest.raises(ValueError, match="not numbers"):
        summarize_folds([{"a": "x"}, {"a": "y"}])
    # Real metric dicts summarise cleanly.
    y, s1 = _random_binary(0)
    _, s2 = _random_binary(1)
    out = summarize_folds([binary_metrics(y, s1), binary_metrics(y, s2)])
    assert out["n"]["mean"] == len(y)


def test_evaluate_does_not_import_tensorflow():
    code = "import sys, medtl.stats, medtl.evaluate; assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
