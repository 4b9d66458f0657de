"""medtl.stats.thresholds: threshold rules on hand-built and random validation data."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit, logit
from sklearn.metrics import roc_curve

from medtl.stats.metrics import binary_metrics
from medtl.stats.thresholds import choose_threshold, parse_threshold_rule


def _mid(lo, hi):
    """The midpoint of two probabilities in logit space."""
    return float(expit((logit(lo) + logit(hi)) / 2))


def _sens_spec(y, s, t):
    y, s = np.asarray(y), np.asarray(s)
    pred = s >= t
    return np.mean(pred[y == 1]), np.mean(~pred[y == 0])


def test_youden_picks_the_known_best_cut():
    # neg .1 .2 .3 .6, pos .4 .5 .7 .8: cutting between .3 and .4 gives sens 1, spec 3/4
    # (J = .75), the unique best; the threshold lies midway (in logit space, for probabilities),
    # not on the positive film's score.
    y = [0, 0, 0, 0, 1, 1, 1, 1]
    s = [0.1, 0.2, 0.3, 0.6, 0.4, 0.5, 0.7, 0.8]
    t = choose_threshold(y, s, "youden")
    assert t == pytest.approx(_mid(0.3, 0.4)) and 0.3 < t < 0.4


def test_youden_matches_sklearn_roc_curve():
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.25).astype(int)
    s = np.round(rng.normal(size=300) + y, 2)
    t = choose_threshold(y, s, "youden")
    fpr, tpr, thr = roc_curve(y, s)
    best = np.max(tpr - fpr)
    sens, spec = _sens_spec(y, s, t)
    assert sens + spec - 1 == pytest.approx(best)
    # Ties go to the lowest cut reaching the best J, midway between two distinct scores.
    lowest = np.min(thr[np.isclose(tpr - fpr, best)])
    below = np.unique(s)[np.unique(s) < lowest][-1]
    assert t == pytest.approx((below + lowest) / 2)


def test_sensitivity_rule_hand_built():
    # 10 positives at .1 ... 1.0: sensitivity >= .9 keeps 9 of them, so the cut lies just
    # below .2 (the highest such), midway to the next lower score .15.
    y = [1] * 10 + [0] * 5
    s = [0.1 * i for i in range(1, 11)] + [0.05, 0.15, 0.25, 0.35, 0.45]
    t = choose_threshold(y, s, "sensitivity:0.9")
    assert t == pytest.approx(_mid(0.15, 0.2))
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
    if higher.size:  # t cuts just below a score: that score decides the same and the next fails
        assert _sens_spec(y, s, higher[0]) == _sens_spec(y, s, t)
        if higher.size > 1:
            assert _sens_spec(y, s, higher[1])[0] < target


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
    assert choose_threshold([0, 0, 1, 1], [-2.0, -1.0, 0.5, 3.0], "youden") == -0.25


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


def test_separable_validation_scores_cut_midway():
    # Perfectly separated validation scores: any cut in (.3, .9] is equally right on them; the
    # edge (.9, a positive film's own score) would miss a new positive scoring .89.
    y = [0, 0, 0, 1, 1]
    s = [0.05, 0.2, 0.3, 0.9, 0.95]
    for rule in ("youden", "sensitivity:1.0", "specificity:1.0"):
        assert choose_threshold(y, s, rule) == pytest.approx(_mid(0.3, 0.9))  # 0.663
    # Scores that are not probabilities (logits) are split midway on their own scale.
    assert choose_threshold(y, [-3.0, -1.0, -0.5, 2.0, 2.5], "youden") == pytest.approx(0.75)


def test_temperature_or_platt_calibration_does_not_change_the_decisions():
    # logit(calibrated) = a * logit(raw) + b: the threshold chosen on calibrated validation
    # scores decides every new film as the one chosen on raw scores does.
    rng = np.random.default_rng(3)
    y = (rng.random(60) < 0.3).astype(int)
    raw = expit(rng.normal(size=60) + 2.0 * y)
    new = expit(rng.normal(size=400) * 2)
    for a, b in ((1 / 2.5, 0.0), (0.7, -0.4)):
        cal = lambda p: expit(a * logit(p) + b)  # noqa: E731
        for rule in ("youden", "sensitivity:0.9", "specificity:0.9"):
            t_raw, t_cal = choose_threshold(y, raw, rule), choose_threshold(y, cal(raw), rule)
            assert ((new >= t_raw) == (cal(new) >= t_cal)).all()


def test_rules_need_their_class():
    with pytest.raises(ValueError, match="0 positive and 3 negative"):
        choose_threshold([0, 0, 0], [0.1, 0.2, 0.3], "youden")
    with pytest.raises(ValueError, match="2 positive and 0 negative"):
        choose_threshold([1, 1], [0.1, 0.2], "specificity:0.9")
    # Sensitivity only needs positives.
    assert choose_threshold([1, 1], [0.1, 0.2], "sensitivity:1.0") == 0.1
