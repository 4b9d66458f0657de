"""Class-weighted losses on soft (mixup / cutmix) targets: hand-computed values.

A target mixed by ``lam`` stands for two samples, so the loss must be ``lam`` times the first
sample's class-weighted loss plus ``1 - lam`` times the second's (medtl.train.losses).
"""

from __future__ import annotations

from math import log

import numpy as np
import pytest

from medtl.train.losses import BinaryLoss, CategoricalLoss


def value(loss, y, p) -> float:
    return float(loss(np.asarray(y, "float32"), np.asarray(p, "float32")))


def test_weighted_bce_of_a_soft_target_is_the_weighted_mixture():
    loss = BinaryLoss("bce", weights=[[0.5], [3.0]])  # w_neg 0.5, w_pos 3
    # y = 0.3: 0.3 * 3 * -log(0.8) + 0.7 * 0.5 * -log(0.2)
    expected = 0.3 * 3.0 * -log(0.8) + 0.7 * 0.5 * -log(0.2)
    assert value(loss, [[0.3]], [[0.8]]) == pytest.approx(expected, rel=1e-5)
    # a batch averages the samples; hard targets keep their plain weighted loss
    both = value(loss, [[0.3], [1.0]], [[0.8], [0.9]])
    assert both == pytest.approx((expected + 3.0 * -log(0.9)) / 2, rel=1e-5)


def test_weighted_multilabel_soft_targets_per_label_with_smoothing():
    s = 0.1
    loss = BinaryLoss("bce", weights=[[0.8, 0.5], [1.5, 4.0]], label_smoothing=s)
    y, p = [0.25, 1.0], [0.6, 0.3]

    def ce(t, q):
        return -(t * log(q) + (1 - t) * log(1 - q))

    hi, lo = 1 - s / 2, s / 2  # the smoothed positive and negative targets
    label0 = 0.25 * 1.5 * ce(hi, 0.6) + 0.75 * 0.8 * ce(lo, 0.6)
    label1 = 4.0 * ce(hi, 0.3)
    assert value(loss, [y], [p]) == pytest.approx((label0 + label1) / 2, rel=1e-5)


def test_focal_soft_target_is_the_mixture_of_the_hard_ones():
    loss = BinaryLoss("focal", weights=[[0.7], [2.0]], gamma=2.0, alpha=0.25)
    p = [[0.35]]
    pos, neg = value(loss, [[1.0]], p), value(loss, [[0.0]], p)
    # by hand: positive 2 * 0.25 * 0.65^2 * -log(0.35); negative 0.7 * 0.75 * 0.35^2 * -log(0.65)
    assert pos == pytest.approx(2.0 * 0.25 * 0.65**2 * -log(0.35), rel=1e-5)
    assert neg == pytest.approx(0.7 * 0.75 * 0.35**2 * -log(0.65), rel=1e-5)
    assert value(loss, [[0.4]], p) == pytest.approx(0.4 * pos + 0.6 * neg, rel=1e-5)


def test_unweighted_bce_of_a_soft_target_is_cross_entropy_against_it():
    assert value(BinaryLoss("bce"), [[0.3]], [[0.8]]) == pytest.approx(-(0.3 * log(0.8) + 0.7 * log(0.2)), rel=1e-5)


def test_weighted_cce_of_a_mixed_one_hot_row():
    loss = CategoricalLoss("cce", weights=[1.0, 2.0, 4.0])
    # 0.3 of class 0 (weight 1), 0.7 of class 1 (weight 2)
    expected = 0.3 * 1.0 * -log(0.2) + 0.7 * 2.0 * -log(0.5)
    assert value(loss, [[0.3, 0.7, 0.0]], [[0.2, 0.5, 0.3]]) == pytest.approx(expected, rel=1e-5)
    # one-hot rows: the class weight times the cross-entropy, as before
    assert value(loss, [[0.0, 0.0, 1.0]], [[0.2, 0.5, 0.3]]) == pytest.approx(4.0 * -log(0.3), rel=1e-5)


def test_weighted_cce_soft_row_with_smoothing_is_the_mixture_of_smoothed_losses():
    s, k = 0.15, 3
    loss = CategoricalLoss("cce", weights=[1.0, 2.0, 4.0], label_smoothing=s)
    p = [0.2, 0.5, 0.3]

    def smoothed(c):
        t = np.full(k, s / k)
        t[c] += 1 - s
        return -float(np.sum(t * np.log(p)))

    expected = 0.6 * 1.0 * smoothed(0) + 0.4 * 4.0 * smoothed(2)
    assert value(loss, [[0.6, 0.0, 0.4]], [p]) == pytest.approx(expected, rel=1e-5)
    assert value(loss, [[0.0, 1.0, 0.0]], [p]) == pytest.approx(2.0 * smoothed(1), rel=1e-5)


def test_weighted_categorical_focal_soft_row():
    loss = CategoricalLoss("focal", weights=[1.0, 3.0], gamma=2.0, alpha=0.5)
    p = [0.4, 0.6]
    expected = 0.25 * 1.0 * 0.5 * 0.6**2 * -log(0.4) + 0.75 * 3.0 * 0.5 * 0.4**2 * -log(0.6)
    assert value(loss, [[0.25, 0.75]], [p]) == pytest.approx(expected, rel=1e-5)
