"""medtl.evaluate.thresholds: threshold rules on hand-built and random validation data."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from medtl.evaluate.metrics import binary_metrics
from medtl.evaluate.thresholds import choose_threshold, parse_threshold_rule


def _sens_spec(y, s, t):
    y, s = np.asarray(y), np.asarray(s)
    pred = s >= t
    return np.mean(pred[y == 1]), np.mean(~pred[y == 0])


def test_youden_picks_the_known_best_cut():
    # neg .1 .2 .3 .6, pos .4 .5 .7 .8: t = .4 gives sens 1, spec 3/4 (J = .75), the unique best.
    y = [0, 0, 0, 0, 1, 1, 1, 1]
    s = [0.1, 0.2, 0.3, 0.6, 0.4, 0.5, 0.7, 0.8]
    assert choose_threshold(y, s, "youden") == 0.4


def test_youden_matches_sklearn_roc_curve():
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.25).astype(int)
    s = np.round(rng.normal(size=300) + y, 2)
    t = choose_threshold(y, s, "youden")
    fpr, tpr, thr = roc_curve(y, s)
    best = np.max(tpr - fpr)
    sens, spec = _sens_spec(y, s, t)
    assert sens + spec - 1 == pytest.approx(best)
    # Ties go to the lowest threshold reaching the best J.
    assert t == pytest.approx(np.min(thr[np.isclose(tpr - fpr, best)]))


def test_sensitivity_rule_hand_built():
    # 10 positives at .1 ... 1.0: sensitivity >= .9 keeps 9 of them, so t = .2 (the highest such).
    y = [1] * 10 + [0] * 5
    s = [0.1 * i for i in range(1, 11)] + [0.05, 0.15, 0.25, 0.35, 0.45]
    t = choose_threshold(y, s, "sensitivity:0.9")
    assert t == pytest.approx(0.2)
    assert binary_metrics(y, s, t)["sensitivity"] == pytest.approx(0.9)
    assert binary_metrics(y, s, t)["specificity"] == pytest.approx(2 / 5)  # .25 .35 .45 are above


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 1.0])
def test_sensitivity_rule_random(target):
    rng = np.random.default_rng(1)
    y = (rng.random(250) < 0.3).astype(int)
    s = np.round(rng.normal(size=250) + 1.5 * y, 1)  # many ties
    t = choose_threshold(y, s, f"sensitivity:{target}")
    assert _sens_spec(y, s, t)[0] >= target
    higher = np.unique(s)[np.unique(s) > t]
    if higher.size:
        assert _sens_spec(y, s, higher[0])[0] < target  # t is the highest that works


@pytest.mark.parametrize("target", [0.8, 0.9, 1.0])
def test_specificity_rule_random(target):
    rng = np.random.default_rng(2)
    y = (rng.random(250) < 0.3).astype(int)
    s = np.round(rng.normal(size=250) + 1.5 * y, 1)
    t = choose_threshold(y, s, f"specificity:{target}")
    assert _sens_spec(y, s, t)[1] >= target
    lower = np.unique(s)[np.unique(s) < t]
    assert _sens_spec(y, s, lower[-1])[1] < target  # t is the lowest that works


def test_specificity_one_calls_everything_above_the_top_negative_positive():
    y = [0, 0, 1, 1]
    s = [0.2, 0.9, 0.5, 0.9]
    t = choose_threshold(y, s, "specificity:1.0")
    # A negative ties the top positive: only a threshold above 0.9 reaches specificity 1.
    assert t > 0.9 and _sens_spec(y, s, t) == (0.0, 1.0)


def test_fixed_and_logits():
    assert choose_threshold([0, 1], [0.2, 0.8], "fixed:0.3") == 0.3
    assert choose_threshold([0, 0, 1, 1], [-2.0, -1.0, 0.5, 3.0], "youden") == 0.5


@pytest.mark.parametrize(
    "rule", ["youden:1", "sens:0.9", "sensitivity:1.5", "sensitivity:", "specificity:-0.1", "fixed:abc", "", "f1"]
)
def test_bad_rules_list_the_allowed_forms(rule):
    with pytest.raises(ValueError, match="allowed forms: 'youden', 'sensitivity:0.9'"):
        choose_threshold([0, 1], [0.2, 0.8], rule)


def test_parse_rule():
    assert parse_threshold_rule("youden") == ("youden", None)
    assert parse_threshold_rule(" Specificity:0.95 ") == ("specificity", 0.95)
    assert parse_threshold_rule("fixed:-1.5") == ("fixed", -1.5)


def test_rules_need_their_class():
    with pytest.raises(ValueError, match="0 positive and 3 negative"):
        choose_threshold([0, 0, 0], [0.1, 0.2, 0.3], "youden")
    with pytest.raises(ValueError, match="2 positive and 0 negative"):
        choose_threshold([1, 1], [0.1, 0.2], "specificity:0.9")
    # Sensitivity only needs positives.
    assert choose_threshold([1, 1], [0.1, 0.2], "sensitivity:1.0") == 0.1
