"""medtl.stats.thresholds: threshold rules on hand-built and random validation data."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit, logit
from sklearn.metrics import roc_curve

from medtl.stats.metrics import binary_metrics
from medtl.stats.thresholds import choose_threshold, parse_threshold_rule, threshold_interval


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
    "rule", ["youden:1", "sens:0.9", "sensitivity:1.5", "sensitivity:", "specificity:-0.1", "fixed:abc", "", "f1",
             "youden:centre", "youden-centre:0.5", "prevalence:", "prevalence:1", "prevalence:0", "calibrated",
             "calibrated:1.0", "calibrated:-0.2"]
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
        for rule in ("youden", "youden-centre", "prevalence", "prevalence:0.2", "sensitivity:0.9", "specificity:0.9"):
            t_raw, t_cal = choose_threshold(y, raw, rule), choose_threshold(y, cal(raw), rule)
            assert ((new >= t_raw) == (cal(new) >= t_cal)).all()


def test_rules_need_their_class():
    with pytest.raises(ValueError, match="0 positive and 3 negative"):
        choose_threshold([0, 0, 0], [0.1, 0.2, 0.3], "youden")
    with pytest.raises(ValueError, match="2 positive and 0 negative"):
        choose_threshold([1, 1], [0.1, 0.2], "specificity:0.9")
    # Sensitivity only needs positives.
    assert choose_threshold([1, 1], [0.1, 0.2], "sensitivity:1.0") == 0.1


# --- rules for operating points that survive shift (issue 19) --------------------------------


def test_parse_new_rules():
    assert parse_threshold_rule("Youden-Centre") == ("youden-centre", None)
    assert parse_threshold_rule("prevalence") == ("prevalence", None)
    assert parse_threshold_rule("prevalence:0.2") == ("prevalence", 0.2)
    assert parse_threshold_rule("calibrated:0.5") == ("calibrated", 0.5)
    with pytest.raises(ValueError, match="strictly between 0 and 1.*'youden-centre'.*'calibrated:0.5'"):
        parse_threshold_rule("calibrated:1")


def test_youden_centre_on_separable_data_is_the_middle_of_the_gap():
    # Any cut in (.1, .9] is perfect here; the centre of the gap in logit space is logit 0.
    y = [0, 0, 0, 1, 1]
    s = [0.01, 0.02, 0.1, 0.9, 0.95]
    assert choose_threshold(y, s, "youden-centre") == pytest.approx(0.5)


def test_youden_centre_with_one_best_cut_is_youden():
    y = [0, 0, 0, 0, 1, 1, 1, 1]
    s = [0.1, 0.2, 0.3, 0.6, 0.4, 0.5, 0.7, 0.8]
    assert choose_threshold(y, s, "youden-centre") == choose_threshold(y, s, "youden") == pytest.approx(_mid(0.3, 0.4))


def test_youden_centre_spans_tied_best_cuts():
    # labels in score order 0 0 1 0 1 1: J = 2/3 both for cuts in (.2, .3] and in (.4, .5].
    # youden takes the lower; the centre of (.2, .5] in logit space is expit(logit(.2) / 2) = 1/3.
    y = [0, 0, 1, 0, 1, 1]
    s = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    assert choose_threshold(y, s, "youden") == pytest.approx(_mid(0.2, 0.3))
    assert choose_threshold(y, s, "youden-centre") == pytest.approx(1 / 3)
    # the same on logits: midway between -2 and 1
    assert choose_threshold(y, [-3.0, -2.0, -1.0, 0.0, 1.0, 2.0], "youden-centre") == pytest.approx(-0.5)


def test_prevalence_rule_known_answers():
    # 2 positives of 5: the top two scores (.6, .8) are called positive.
    y = [0, 0, 1, 0, 1]
    s = [0.1, 0.2, 0.3, 0.6, 0.8]
    assert choose_threshold(y, s, "prevalence") == pytest.approx(_mid(0.3, 0.6))
    assert choose_threshold(y, s, "prevalence:0.2") == pytest.approx(_mid(0.6, 0.8))  # one film
    assert choose_threshold(y, s, "prevalence:0.5") == pytest.approx(_mid(0.2, 0.3))  # 2.5 films: ties go low
    # tied scores: 2 of 5 cannot be called; calling 1 (|.2 - .4|) is nearer than 4 (|.8 - .4|)
    assert choose_threshold(y, [0.1, 0.5, 0.5, 0.5, 0.9], "prevalence") == pytest.approx(_mid(0.5, 0.9))
    # an explicit prevalence needs no labels; the data's own prevalence needs both classes
    assert choose_threshold([0] * 5, s, "prevalence:0.2") == pytest.approx(_mid(0.6, 0.8))
    with pytest.raises(ValueError, match="0 positive and 5 negative"):
        choose_threshold([0] * 5, s, "prevalence")


def test_prevalence_rule_calls_the_prevalence_share():
    rng = np.random.default_rng(4)
    y = (rng.random(400) < 0.2).astype(int)
    s = expit(rng.normal(size=400) + 2 * y)
    t = choose_threshold(y, s, "prevalence")
    assert np.sum(s >= t) == y.sum()


def test_calibrated_rule_without_a_calibrator_is_fixed():
    assert choose_threshold([0, 0, 1], [0.1, 0.2, 0.9], "calibrated:0.3") == 0.3
    assert choose_threshold([0, 0, 0], [0.1, 0.2, 0.9], "calibrated:0.3") == 0.3  # no labels needed


# --- the threshold's own bootstrap interval ----------------------------------------------------


def _width(ci):
    return float(logit(ci[1]) - logit(ci[0]))


def test_threshold_interval_wide_for_a_small_separable_split_narrow_for_a_large_one():
    # 6 + 6 films with a wide gap: where in the gap the cut lands depends on which films were drawn.
    y = [0] * 6 + [1] * 6
    s = expit(np.array([-6.0, -5, -4, -3, -2, -1, 1, 2, 3, 4, 5, 6]))
    small = threshold_interval(y, s, "youden", n_boot=500)
    assert small[0] < 0.5 < small[1] and _width(small) > 1.5
    rng = np.random.default_rng(5)
    y_big = (rng.random(20000) < 0.5).astype(int)
    s_big = expit(rng.normal(size=20000) + 2 * y_big)  # best cut: logit 1
    big = threshold_interval(y_big, s_big, "prevalence", n_boot=200)
    assert _width(big) < 0.15 and big[0] < expit(1) < big[1]


def test_threshold_interval_is_reproducible_and_resamples_patients():
    rng = np.random.default_rng(6)
    y1 = (rng.random(60) < 0.4).astype(int)
    s1 = expit(rng.normal(size=60) + 1.5 * y1)
    y, s = np.repeat(y1, 4), np.repeat(s1, 4)  # 60 patients, 4 identical films each
    groups = np.repeat(np.arange(60), 4)
    a = threshold_interval(y, s, "prevalence", groups=groups, n_boot=300, seed=1)
    assert a == threshold_interval(y, s, "prevalence", groups=groups, n_boot=300, seed=1)
    assert a != threshold_interval(y, s, "prevalence", groups=groups, n_boot=300, seed=2)
    # resampling films as if independent pretends to 240 patients: a narrower interval
    films = threshold_interval(y, s, "prevalence", n_boot=300, seed=1)
    assert _width(films) < 0.75 * _width(a)


def test_threshold_interval_fixed_undefined_and_too_few():
    assert threshold_interval([0, 1], [0.2, 0.8], "fixed:0.4") == (0.4, 0.4)
    assert threshold_interval([0, 1], [0.2, 0.8], "calibrated:0.3") == (0.3, 0.3)
    with pytest.raises(ValueError, match="0 positive"):
        threshold_interval([0, 0, 0], [0.1, 0.2, 0.3], "youden")

    def fails_with_film_zero(y, s):  # usable only on replicates without the film scoring .01: ~35%
        if np.any(s == 0.01):
            raise ValueError("undefined")
        return 0.5

    y = [0, 1] * 5
    s = [0.01] + [0.1 * i for i in range(1, 10)]
    assert threshold_interval(y, s, "youden", n_boot=500, choose=lambda yy, ss: 0.5) == (0.5, 0.5)
    with pytest.raises(ValueError, match="undefined"):  # on the full data it fails loudly
        threshold_interval(y, s, "youden", n_boot=500, choose=fails_with_film_zero)


def test_threshold_interval_none_when_most_replicates_are_unusable():
    y = [0, 1] * 5
    s = [0.1 * i for i in range(1, 11)]
    calls = []

    def usable_without_top_film(yy, ss):
        calls.append(1)
        if len(calls) > 1 and np.any(ss == 1.0):  # the full data (first call) pass
            raise ValueError("undefined")
        return 0.5

    assert threshold_interval(y, s, "youden", n_boot=500, choose=usable_without_top_film) is None
