"""Localisation scores (issue 21): known answers on tiny hand-computed maps, intervals included,
checked against direct numpy computations written here independently of the module."""

from __future__ import annotations

import numpy as np
import pytest

from medtl.stats import localisation as loc
from medtl.stats.bootstrap import resample_weights


def _box(shape, r0, r1, c0, c1):
    a = np.zeros(shape, bool)
    a[r0:r1, c0:c1] = True
    return a


def test_pointing_game_known_answers():
    m = np.zeros((6, 6))
    m[1, 4] = 1.0
    assert loc.pointing_game(m, _box((6, 6), 0, 2, 3, 6)) == 1.0
    assert loc.pointing_game(m, _box((6, 6), 3, 6, 0, 3)) == 0.0
    m[5, 0] = 1.0  # a tie: one maximal pixel inside is enough
    assert loc.pointing_game(m, _box((6, 6), 3, 6, 0, 3)) == 1.0
    # A constant map has no location: it scores the box's area share, 9/36.
    assert loc.pointing_game(np.full((6, 6), 0.3), _box((6, 6), 3, 6, 0, 3)) == pytest.approx(0.25)


def test_heat_in_box_is_min_shifted():
    m = np.array([[1.0, 2.0], [3.0, 5.0]])  # shifted: 0, 1, 2, 4 -> total 7
    assert loc.heat_in_box(m, np.array([[True, True], [False, False]])) == pytest.approx(1 / 7)
    assert loc.heat_in_box(m, np.array([[False, False], [False, True]])) == pytest.approx(4 / 7)
    assert loc.heat_in_box(np.ones((4, 5)), _box((4, 5), 0, 2, 0, 2)) == pytest.approx(4 / 20)


def test_iou_iobb_use_the_largest_hot_component_box():
    m = np.zeros((10, 10))
    m[0, 9] = 1.0  # the peak, alone: a 1-pixel hot component
    m[4:7, 2:6] = 0.6  # 12 hot pixels (>= 0.5 of the max): the largest component
    m[8, 8] = 0.2  # not hot
    assert loc.hot_box(m) == (4, 7, 2, 6)
    ann = _box((10, 10), 5, 9, 3, 5)  # 8 pixels; 4 of them in the predicted box (rows 5-6, cols 3-4)
    s = loc.score_film(m, [ann])
    assert s["iobb"] == pytest.approx(4 / 12)  # ChestX-ray8: intersection / predicted box
    assert s["iou"] == pytest.approx(4 / (12 + 8 - 4))
    assert s["iobb_hit"] == 1.0 and s["iou_hit"] == 0.0  # 0.333 > 0.1; 0.25 <= 0.3
    assert s["pointing"] == 0.0  # the peak at (0, 9) is outside
    # Several regions: the best one counts for IoU / IoBB; the union for pointing and heat.
    s2 = loc.score_film(m, [ann, _box((10, 10), 0, 1, 9, 10)])
    assert s2["pointing"] == 1.0 and s2["iobb"] == pytest.approx(4 / 12)
    assert loc.score_film(m, [ann], iobb_hit=0.4)["iobb_hit"] == 0.0
    # Diagonal neighbours join one component (8-connectivity).
    d = np.eye(4)
    assert loc.hot_box(d) == (0, 4, 0, 4)


def test_baseline_maps():
    c = loc.centre_map((9, 11))
    assert np.unravel_index(np.argmax(c), c.shape) == (4, 5)
    a = _box((8, 8), 0, 4, 0, 4)
    b = _box((16, 16), 0, 8, 0, 8)  # the same relative place, another film size
    far = _box((8, 8), 4, 8, 4, 8)
    priors = loc.prior_maps([a, b, far])
    # Film 2's prior is the mean of films 0 and 1: top-left, never its own bottom-right box.
    assert priors[2].shape == (8, 8)
    assert loc.pointing_game(priors[2], far) == 0.0
    np.testing.assert_allclose(priors[2][0, 0], 1.0) and np.testing.assert_allclose(priors[2][7, 7], 0.0)
    # Film 0's prior is the mean of b (top-left) and far (bottom-right): 0.5 in each quadrant.
    np.testing.assert_allclose(priors[0][1, 1], 0.5)


def test_mean_interval_matches_a_direct_bootstrap_with_the_same_seed():
    values = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 0.5])
    groups = ["a", "a", "b", "c", "d", "d"]
    iv = loc.mean_interval(values, groups, n_boot=500, seed=7)
    # Direct: draw 4 patients with replacement per replicate, average their films' scores.
    rng = np.random.default_rng(7)
    codes = np.array([0, 0, 1, 2, 3, 3])
    reps = []
    for _ in range(500):
        drawn = rng.integers(0, 4, size=4)
        counts = np.bincount(drawn, minlength=4)[codes]
        reps.append((counts * values).sum() / counts.sum())
    low, high = np.quantile(reps, [0.025, 0.975])
    assert iv.point == pytest.approx(values.mean())
    assert (iv.low, iv.high) == (pytest.approx(low), pytest.approx(high))
    # resample_weights is the same draw: one chunk of the replicates.
    w = next(resample_weights(6, groups, 500, 7))
    np.testing.assert_allclose((w @ values) / w.sum(axis=1), reps)


def _hand_maps():
    """Three films, two patients; known maps and boxes."""
    films = []
    m = np.zeros((4, 4)); m[0, 0] = 1.0  # noqa: E702
    films.append((m, _box((4, 4), 0, 2, 0, 2), "p1"))  # points inside
    m = np.zeros((4, 4)); m[3, 3] = 1.0  # noqa: E702
    films.append((m, _box((4, 4), 0, 2, 0, 2), "p1"))  # points outside
    m = np.zeros((4, 4)); m[1, 2] = 1.0  # noqa: E702
    films.append((m, _box((4, 4), 1, 2, 2, 4), "p2"))  # points inside
    return films


def test_summary_and_verdict_on_hand_computed_maps():
    films = _hand_maps()
    scores = {"gradcam": {k: [] for k in loc.MEASURES}, "flat": {k: [] for k in loc.MEASURES}}
    for m, a, _ in films:
        for name, mm in (("gradcam", m), ("flat", np.ones_like(m))):
            s = loc.score_film(mm, [a])
            for k in loc.MEASURES:
                scores[name][k].append(s[k])
    assert scores["gradcam"]["pointing"] == [1.0, 0.0, 1.0]
    assert scores["flat"]["pointing"] == [0.25, 0.25, 0.125]
    groups = [g for *_, g in films]
    out = loc.summarise(scores, groups, labels={"gradcam": "Grad-CAM"}, n_boot=400, seed=3)
    pg = out["methods"]["gradcam"]["pointing"]
    assert pg["point"] == pytest.approx(2 / 3, abs=1e-4)
    # Patient replicates: {p1, p1} -> 0.5, {p2, p2} -> 1, {p1, p2} -> 2/3: the interval is [0.5, 1].
    assert (pg["low"], pg["high"]) == (0.5, 1.0)
    assert pg["baseline"] == "flat" and pg["baseline_value"] == pytest.approx(0.2083, abs=1e-4)
    assert pg["better_than_chance"]  # 0.5 > 0.208
    # The rule is exactly "low <= best baseline value": a baseline at 0.5 makes it not better.
    scores["centre"] = {k: [0.5, 0.5, 0.5] for k in loc.MEASURES}
    out = loc.summarise(scores, groups, labels={"gradcam": "Grad-CAM"}, n_boot=400, seed=3)
    pg = out["methods"]["gradcam"]["pointing"]
    assert pg["baseline"] == "centre" and not pg["better_than_chance"]
    verdict = out["verdicts"]["gradcam"]
    assert verdict.startswith("Grad-CAM: not better than chance on pointing game 0.667 [0.500, 1.000] vs film centre")
    assert verdict.endswith(loc.NOT_POINTING)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="same size"):
        loc.score_film(np.zeros((3, 3)), [np.zeros((3, 4), bool)])
    with pytest.raises(ValueError, match="at least one"):
        loc.score_film(np.zeros((3, 3)), [])
    with pytest.raises(ValueError, match="hot_fraction"):
        loc.hot_box(np.eye(3), 0.0)
