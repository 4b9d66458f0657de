"""Films to refer (medtl.stats.selective): the uncertain rule on synthetic member scores, and
the selective prediction curve against answers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medtl.stats.selective import (
    confidence, member_disagreement, member_spread, selective_curve, selective_summary, uncertain_flags,
)


def test_uncertain_when_a_member_decides_otherwise():
    # 3 members x 4 films, threshold 0.5. Ensemble means: 0.8, 0.5333, 0.3, 0.4667.
    m = np.array([[0.9, 0.6, 0.2, 0.6],
                  [0.8, 0.4, 0.3, 0.4],
                  [0.7, 0.6, 0.4, 0.4]])
    spread, share, flag = uncertain_flags(m, [0.5])
    # film 1: ensemble positive (0.533), member 1 negative; film 3: ensemble negative, member 0 positive
    np.testing.assert_allclose(share, [0, 1 / 3, 0, 1 / 3])
    assert flag.tolist() == [False, True, False, True]
    np.testing.assert_allclose(spread, np.std(m, axis=0))  # population sd across members
    # a member exactly at the threshold decides positive, as the ensemble does (s >= t)
    assert not uncertain_flags([[0.5], [0.7]], [0.5])[2][0]


def test_uncertain_multilabel_and_multiclass():
    # multilabel: 2 members, 1 film, 2 labels; label 2 splits (0.6 / 0.2, mean 0.4 -> negative)
    ml = np.array([[[0.9, 0.6]], [[0.8, 0.2]]])
    assert member_disagreement(ml, [0.5, 0.5]).tolist() == [0.5]
    np.testing.assert_allclose(member_spread(ml), [0.2])  # the larger column sd (0.2 vs 0.05)
    # multiclass (thresholds None): arg-max; member 1 calls class 2, the ensemble class 0
    mc = np.array([[[0.6, 0.1, 0.3]], [[0.5, 0.1, 0.4]], [[0.3, 0.2, 0.5]]])
    assert member_disagreement(mc, None).tolist() == [pytest.approx(1 / 3)]


def test_confidence_is_the_logit_distance():
    assert confidence([0.5], 0.5)[0] == 0
    assert confidence([0.8], 0.2)[0] == pytest.approx(2 * math.log(4))
    assert np.isfinite(confidence([0.0, 1.0], 0.5)).all()


def test_selective_curve_known_answers():
    # 10 films at threshold 0.5; confidence order (|logit s - logit 0.5| falls with |s - 0.5|):
    # 0.99(y1 ok) 0.02(y0 ok) 0.95(y0 wrong) 0.1(y0 ok) 0.85(y1 ok) 0.2(y1 wrong) 0.7(y1 ok)
    # 0.35(y0 ok) 0.55(y0 wrong) 0.48(y1 wrong)
    y = [1, 0, 0, 0, 1, 1, 1, 0, 0, 1]
    s = [0.99, 0.02, 0.95, 0.1, 0.85, 0.2, 0.7, 0.35, 0.55, 0.48]
    c = selective_curve(y, s, 0.5, kept=(1.0, 0.9, 0.8, 0.5, 0.1))
    assert c["n_kept"] == [10, 9, 8, 5, 1]
    assert c["accuracy"] == pytest.approx([0.6, 6 / 9, 6 / 8, 0.8, 1.0])
    # 100%: positives 3/5 right, negatives 3/5 -> 0.6; 90%: pos 3/4, neg 3/5 -> 0.675
    # 80%: pos 3/4, neg 3/4 -> 0.75; 50%: pos 2/2, neg 2/3; 10%: one class only -> None
    assert c["balanced_accuracy"][:4] == pytest.approx([0.6, 0.675, 0.75, (1 + 2 / 3) / 2])
    assert c["balanced_accuracy"][4] is None


def test_selective_curve_per_film_thresholds_and_summary():
    # per-film thresholds (a CV run's fold thresholds): 0.3 at t=0.2 is positive, 0.3 at t=0.4 negative
    c = selective_curve([1, 0], [0.3, 0.3], [0.2, 0.4], kept=(1.0,))
    assert c["accuracy"] == [1.0]
    s = selective_summary([1, 0, 1, 0, 1], [0.9, 0.1, 0.45, 0.2, 0.8], 0.5)
    assert s["n_kept"] == {"100": 5, "90": 5, "80": 4}
    assert s["accuracy"] == {"100": pytest.approx(0.8), "90": pytest.approx(0.8), "80": 1.0}
    with pytest.raises(ValueError, match="same non-zero length"):
        selective_curve([1, 0], [0.5], 0.5)
